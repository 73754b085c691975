"""A model's learned out-of-distribution score (the card's ``ood_check``) through the real
HTTP stack: flagged above the card's threshold, with the card's reason, wherever a flag shows
(results, summary, metrics, FHIR, HL7 v2, OIP, explain, audit); versions without it unchanged.

The tiny models' ``ood_score`` is the image's mean brightness (tests/app/tiny_model.py), so
each test draws cells on either side of the threshold by their brightness.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from app.batching import BATCH_TOLERANCE
from app.dataplane import wilson_interval
from app.settings import Settings
from contract.card import CardCalibration, CardOODCheck
from tests.app.conftest import serve
from tests.app.test_api import assert_error, metric_value
from tests.app.tiny_model import export_tiny_model

pytestmark = pytest.mark.anyio

SIZE = 450
_YY, _XX = np.mgrid[:SIZE, :SIZE]
_DISC = (_YY - SIZE / 2) ** 2 + (_XX - SIZE / 2) ** 2 < 100**2  # ~15 % of the frame


def disc(value: int) -> NDArray[np.uint8]:
    """A uniform grey disc on black: passes the image checks; its score is set by ``value``."""
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[_DISC] = value
    return pixels


def brightness(pixels: NDArray[np.uint8]) -> float:
    return float(pixels.astype(np.float64).mean() / 255.0)


# One grey level apart: the threshold lies between them, ~3e-4 from each score (float32
# reductions over 450x450x3 values differ by ~1e-6 at most).
JUST_BELOW, JUST_ABOVE = disc(120), disc(121)
THRESHOLD = (brightness(JUST_BELOW) + brightness(JUST_ABOVE)) / 2
DIM, BRIGHT = disc(60), disc(230)
OOD_CHECK = CardOODCheck(
    threshold=THRESHOLD,
    method="mean brightness (test model)",
    measured={"flagged_cnmc_out_of_fold": 0.0},
)
CALIBRATION = CardCalibration(
    method="temperature",
    parameters={"temperature": 1.7},
    applied="in_graph",
    ece_before=0.12,
    ece_after=0.03,
    what="test values",
)
KEYS = ["root:admin:adm-secret", "lab-a:classify:lab-secret"]


@pytest.fixture(scope="module")
def ood_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'scored': score output + ood_check + calibration + explain; 'plain': neither (the
    versions written before ood_check); 'uncarded': the output without the card group;
    'mismatch': the card group without the output."""
    store = tmp_path_factory.mktemp("ood") / "model_store"
    export_tiny_model(
        store,
        "scored",
        1,
        seed=1,
        ood_output=True,
        ood_check=OOD_CHECK,
        calibration=CALIBRATION,
        explain=True,
    )
    export_tiny_model(store, "plain", 1, seed=1)
    export_tiny_model(store, "uncarded", 1, seed=1, ood_output=True)
    export_tiny_model(store, "mismatch", 1, seed=1, ood_check=OOD_CHECK)
    (store / "DEFAULT").write_text("scored\n")
    return store


@pytest.fixture
def settings(ood_store: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return Settings(
            model_store=ood_store, warmup_batch_sizes=[1], store_poll_seconds=0, **overrides
        )

    return build


def png(pixels: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def files(images: list[NDArray[np.uint8]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]


async def test_flagged_above_the_threshold_with_the_cards_reason_and_left_out_of_the_summary(
    settings: Callable[..., Settings],
) -> None:
    images = [DIM, JUST_BELOW, JUST_ABOVE, BRIGHT, DIM]
    above = [False, False, True, True, False]
    admin = {"x-api-key": "adm-secret"}
    async with serve(settings(api_keys=KEYS)) as client:
        before = (await client.get("/metrics", headers=admin)).text
        response = await client.post(
            "/v1/models/scored/classify", files=files(images), headers={"x-api-key": "lab-secret"}
        )
        after = (await client.get("/metrics", headers=admin)).text
        audit = await client.get("/v1/audit", params={"kind": "image"}, headers=admin)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for result, image, flagged in zip(results, images, above, strict=True):
        assert result["ood_score"] == pytest.approx(brightness(image), abs=1e-5)
        assert result["out_of_distribution"] is flagged
        assert result["input_check"]["out_of_distribution"] is flagged
        assert result["input_check"]["reasons"] == (["unfamiliar_cell"] if flagged else [])
        assert ("out_of_distribution: unfamiliar_cell" in result["warnings"]) is flagged

    summary = response.json()["summary"]
    kept = [r for r, flagged in zip(results, above, strict=True) if not flagged]
    blasts = sum(r["label"] == "all" for r in kept)
    assert summary["n_out_of_distribution"] == 2
    assert summary["blast_fraction_in_distribution"] == pytest.approx(blasts / len(kept))
    assert summary["blast_fraction_ci95"] == list(wilson_interval(blasts, len(kept)))

    name = "leuk_images_out_of_distribution_total"
    flagged_count = metric_value(after, name, model="scored", version="1")
    assert flagged_count - metric_value(before, name, model="scored", version="1") == 2

    assert audit.status_code == 200, audit.text
    recorded = [r["ood_reasons"] for r in audit.json()["records"]]
    assert sorted(recorded) == sorted(r["input_check"]["reasons"] for r in results)


async def test_the_image_checks_reasons_come_first_and_both_are_kept(
    settings: Callable[..., Settings],
) -> None:
    """A bright image that also fails the image checks lists all the reasons, learned last."""
    field = np.full((SIZE, SIZE, 3), 200, np.uint8)  # no black background, bright
    async with serve(settings()) as client:
        response = await client.post("/v1/models/scored/classify", files=files([field]))
    result = response.json()["results"][0]
    assert result["input_check"]["reasons"] == [
        "no_black_background",
        "foreground_too_large",
        "unfamiliar_cell",
    ]


async def test_fhir_and_hl7_answers_carry_the_flag_and_reason(
    settings: Callable[..., Settings],
) -> None:
    async with serve(settings()) as client:
        fhir = await client.post(
            "/v1/models/scored/classify",
            files=files([DIM, BRIGHT]),
            headers={"accept": "application/fhir+json"},
        )
        hl7 = await client.post(
            "/v1/models/scored/classify",
            files=files([DIM, BRIGHT]),
            headers={"accept": "application/hl7-v2"},
        )
    assert fhir.status_code == 200 and hl7.status_code == 200
    notes = [
        note["text"]
        for entry in fhir.json()["entry"]
        for note in entry["resource"].get("note", [])
        if "Out of distribution" in note["text"]
    ]
    assert len(notes) == 1 and "unfamiliar_cell" in notes[0]
    assert hl7.text.count("Out of distribution (unfamiliar_cell)") == 1


async def test_batched_and_lone_scores_agree(settings: Callable[..., Settings]) -> None:
    rng = np.random.default_rng(5)
    images = [disc(int(v)) for v in rng.integers(40, 250, size=8)]
    async with serve(settings()) as client:
        together = (await client.post("/v1/models/scored/classify", files=files(images))).json()
        alone = [
            (await client.post("/v1/models/scored/classify", files=files([image]))).json()
            for image in images
        ]
    for batched, single in zip(together["results"], alone, strict=True):
        single_result = single["results"][0]
        assert abs(batched["ood_score"] - single_result["ood_score"]) <= BATCH_TOLERANCE
        assert batched["out_of_distribution"] == single_result["out_of_distribution"]


@pytest.mark.parametrize("model", ["plain", "uncarded"])
async def test_versions_without_an_ood_check_are_unchanged(
    settings: Callable[..., Settings], model: str
) -> None:
    """No ood_check in the card: no score, no flag, whatever the graph returns."""
    async with serve(settings()) as client:
        response = await client.post(f"/v1/models/{model}/classify", files=files([DIM, BRIGHT]))
        info = (await client.get(f"/v1/models/{model}")).json()
        metadata = (await client.get(f"/v2/models/{model}")).json()
        infer = await client.post(f"/v2/models/{model}/infer", json=_pixels_request([BRIGHT]))
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert result["ood_score"] is None
        assert result["out_of_distribution"] is False and result["input_check"]["reasons"] == []
    assert info["ood_check"] is None and info["calibration"] is None
    assert "ood_score" not in [o["name"] for o in metadata["outputs"]]
    assert "ood_threshold" not in metadata["parameters"]
    assert [o["name"] for o in infer.json()["outputs"]] == [
        "probabilities",
        "label",
        "out_of_distribution",
    ]


async def test_a_card_asking_for_an_output_the_model_lacks_fails_the_version(
    settings: Callable[..., Settings],
) -> None:
    async with serve(settings()) as client:
        response = await client.post("/v1/models/mismatch/classify", files=files([DIM]))
        health = (await client.get("/health")).json()
    assert_error(response, 503, "model_unavailable")
    assert "has no output 'ood_score'" in response.json()["error"]["detail"]
    described = health["models"]["mismatch"]["versions"]["1"]
    assert described["state"] == "failed"
    assert "signature 'serving_default' has no output 'ood_score'" in described["reason"]
    assert "ood_check" in described["reason"]


async def test_model_info_shows_the_cards_ood_check_and_calibration(
    settings: Callable[..., Settings],
) -> None:
    async with serve(settings()) as client:
        info = (await client.get("/v1/models/scored")).json()
        default = (await client.get("/model-info")).json()
    assert info["ood_check"] == OOD_CHECK.model_dump(mode="json")
    assert info["calibration"] == CALIBRATION.model_dump(mode="json")
    assert default["ood_check"]["reason"] == "unfamiliar_cell"


def _pixels_request(images: list[NDArray[np.uint8]]) -> dict[str, Any]:
    batch = np.stack(images)
    return {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(batch.shape),
                "data": batch.ravel().tolist(),
            }
        ]
    }


async def test_oip_returns_the_score_as_an_output_and_lists_it_in_metadata(
    settings: Callable[..., Settings],
) -> None:
    images = [DIM, BRIGHT, JUST_ABOVE]
    async with serve(settings()) as client:
        metadata = (await client.get("/v2/models/scored")).json()
        infer = await client.post("/v2/models/scored/infer", json=_pixels_request(images))
        chosen = await client.post(
            "/v2/models/scored/infer",
            json=_pixels_request(images) | {"outputs": [{"name": "ood_score"}]},
        )
    assert {"name": "ood_score", "datatype": "FP32", "shape": [-1]} in metadata["outputs"]
    assert metadata["parameters"]["ood_threshold"] == pytest.approx(THRESHOLD)
    assert metadata["parameters"]["ood_reason"] == "unfamiliar_cell"
    assert infer.status_code == 200, infer.text
    outputs = {o["name"]: o for o in infer.json()["outputs"]}
    assert outputs["ood_score"]["datatype"] == "FP32" and outputs["ood_score"]["shape"] == [3]
    expected = [brightness(image) for image in images]
    assert outputs["ood_score"]["data"] == pytest.approx(expected, abs=1e-5)
    assert outputs["out_of_distribution"]["data"] == [False, True, True]
    assert [o["name"] for o in chosen.json()["outputs"]] == ["ood_score"]


async def test_explain_flags_the_same_images(settings: Callable[..., Settings]) -> None:
    images = [DIM, BRIGHT]
    async with serve(settings()) as client:
        explained = await client.post("/v1/models/scored/explain", files=files(images))
    assert explained.status_code == 200, explained.text
    results = explained.json()["results"]
    assert [r["out_of_distribution"] for r in results] == [False, True]
    assert [r["input_check"]["reasons"] for r in results] == [[], ["unfamiliar_cell"]]
    for result, image in zip(results, images, strict=True):
        assert result["ood_score"] == pytest.approx(brightness(image), abs=1e-5)
        overlay = Image.open(io.BytesIO(base64.b64decode(result["heatmap"]["png_base64"])))
        assert overlay.format == "PNG"
