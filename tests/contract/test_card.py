"""The model card contract: committed cards validate, and malformed cards are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from contract.card import CARD_FILE, InputChecks, ModelCard

STORE = Path(__file__).resolve().parents[2] / "model_store"
COMMITTED = sorted(STORE.glob(f"*/*/{CARD_FILE}"))


def test_the_store_has_committed_cards() -> None:
    assert len(COMMITTED) >= 3


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: "/".join(p.parts[-3:-1]))
def test_committed_cards_validate_and_round_trip(path: Path) -> None:
    raw = json.loads(path.read_text())
    card = ModelCard.model_validate(raw)
    assert card.name == path.parts[-3] and card.version == int(path.parts[-2])
    assert card.labels[card.positive_index] == "all"
    # Nothing is lost or renamed: written back, the card is the committed one plus the
    # input_checks group, which the older cards predate (its defaults are the calibrated
    # rule), and empty explain, ood_check and calibration groups for versions without them.
    written = json.loads(card.to_json())
    assert written.pop("input_checks") == InputChecks().model_dump(mode="json")
    raw.pop("input_checks", None)
    for optional in ("explain", "ood_check", "calibration"):
        if optional not in raw:
            assert written.pop(optional) is None
    assert written == raw


def _committed() -> dict[str, Any]:
    return dict(json.loads(COMMITTED[0].read_text()))


@pytest.mark.parametrize(
    "change",
    [
        {"positive_label": "blast"},  # not one of the labels
        {"threshold": 1.5},
        {"labels": ["all"]},
        {"files": {}},
        {"thresold": 0.5},  # a misspelt key is refused, not ignored
        {"input": {"model_input_size": [64, 64]}},  # the input contract is incomplete
        {"input_checks": {"min_foreground": 0.6, "max_foreground": 0.5}},
        {"ood_check": {"threshold": 3.0}},  # no method
        {"ood_check": {"threshold": 3.0, "method": "m", "output_name": "probabilities"}},
        {"ood_check": {"threshold": 3.0, "method": "m", "reason": "Unfamiliar cell"}},
        {"ood_check": {"threshold": 3.0, "method": "m", "treshold": 3.0}},
        {"calibration": {"method": "t", "parameters": {}, "applied": "in_service", "what": "x"}},
        {
            "calibration": {
                "method": "t",
                "parameters": {},
                "applied": "in_graph",
                "what": "x",
                "ece_after": 1.5,
            }
        },  # ECE is a share
    ],
)
def test_malformed_cards_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelCard.model_validate(_committed() | change)


def test_ood_check_and_calibration_validate_with_their_defaults_and_round_trip() -> None:
    groups = {
        "ood_check": {"threshold": 41.5, "method": "Mahalanobis distance, penultimate layer"},
        "calibration": {
            "method": "temperature",
            "parameters": {"temperature": 1.6},
            "applied": "in_graph",
            "ece_before": 0.09,
            "ece_after": 0.02,
            "what": "fitted on out-of-fold scores",
        },
    }
    card = ModelCard.model_validate(_committed() | groups)
    assert card.ood_check is not None and card.calibration is not None
    assert (card.ood_check.output_name, card.ood_check.reason) == ("ood_score", "unfamiliar_cell")
    assert card.ood_check.measured == {}
    assert ModelCard.model_validate_json(card.to_json()) == card


def test_the_service_applies_the_cards_input_checks() -> None:
    """The rule lives in the card: a card with another rule changes the service's flags."""
    import numpy as np

    from app.input_checks import check_input

    cell = np.zeros((450, 450, 3), dtype=np.uint8)
    cell[150:300, 150:300] = 200  # 11 % foreground, black border: a C-NMC-like cell
    assert not check_input(cell, (450, 450), InputChecks()).out_of_distribution
    strict = InputChecks(min_foreground=0.2, max_foreground=0.5)
    assert check_input(cell, (450, 450), strict).reasons == ["no_cell_visible"]
    smaller = InputChecks(expected_size=(300, 300))
    assert check_input(cell, (450, 450), smaller).reasons == ["unexpected_size"]


def test_reading_a_card_imports_no_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from contract.card import ModelCard; "
        f"ModelCard.model_validate_json(open({str(COMMITTED[0])!r}).read()); "
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
