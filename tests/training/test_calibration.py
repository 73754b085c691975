"""Out-of-fold calibration (training/calibration.py) on generated scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.calibration import (
    METHODS,
    apply_calibration,
    calibrated_threshold,
    calibration_study,
    cross_fitted,
    expected_calibration_error,
    fit_calibration,
    sigmoid,
)
from training.protocol import Cells, RecipeRun


def calibrated_population(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latent logits L and labels drawn with P(ALL) = sigmoid(L): sigmoid(L) is calibrated."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(0.5, 2.0, n)
    return latent, (rng.random(n) < sigmoid(latent)).astype(np.int64)


def run_of(scores: np.ndarray, thresholds: np.ndarray, folds: np.ndarray) -> RecipeRun:
    return RecipeRun("generated", scores[None], thresholds[None], folds=folds[None])


def study(scores: np.ndarray, threshold: float, labels: np.ndarray) -> dict[str, object]:
    # One cell per subject, so the labels can be drawn per cell.
    cells = Cells(np.array([f"s{i}" for i in range(len(labels))]), labels)
    folds = np.arange(len(labels)) % 5
    return calibration_study(cells, run_of(scores, np.full(len(labels), threshold), folds))


def test_ece_of_a_small_hand_computed_case() -> None:
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    # bin of 0.1: predicted 0.1, observed 0.5; bin of 0.9: predicted 0.9, observed 1.0.
    assert expected_calibration_error(p, y) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    weights = np.array([1.0, 1.0, 2.0, 2.0])
    assert expected_calibration_error(p, y, weights=weights) == pytest.approx(
        (2 * 0.4 + 4 * 0.1) / 6
    )


def test_a_mis_scaled_but_well_ranked_score_is_calibrated_out_of_fold() -> None:
    latent, y = calibrated_population()
    # Over-confident and shifted: a fold model's score, its threshold where z = 0.
    scores = sigmoid(3.0 * latent - 1.0)
    result = study(scores, 0.3, y)
    ece = result["ece"]
    assert isinstance(ece, dict)
    assert ece["raw"]["cells"] > 0.1
    assert ece["platt"]["cells"] < 0.03 and ece["platt"]["cells"] < ece["raw"]["cells"] / 4
    assert ece["isotonic"]["cells"] < 0.04
    final = result["final"]
    assert isinstance(final, dict)
    # z = logit(score) - logit(0.3) = 3 L - 1 - logit(0.3); Platt undoes it: a ~ 1/3.
    assert final["platt"]["a"] == pytest.approx(1 / 3, rel=0.1)


def test_a_calibrated_score_stays_calibrated() -> None:
    latent, y = calibrated_population(seed=1)
    result = study(sigmoid(latent), 0.5, y)
    ece = result["ece"]
    assert isinstance(ece, dict)
    assert ece["raw"]["cells"] < 0.03
    assert ece["platt"]["cells"] < ece["raw"]["cells"] + 0.01


@pytest.mark.parametrize("method", METHODS)
def test_cross_fitting_never_uses_a_folds_own_labels(method: str) -> None:
    latent, y = calibrated_population(n=2000, seed=2)
    folds = np.random.default_rng(3).integers(0, 5, len(y))
    before = cross_fitted(method, 2 * latent, y, folds)  # type: ignore[arg-type]
    flipped = y.copy()
    flipped[folds == 2] = 1 - flipped[folds == 2]  # fold 2's labels, and only they, change
    after = cross_fitted(method, 2 * latent, flipped, folds)  # type: ignore[arg-type]
    assert np.array_equal(before[folds == 2], after[folds == 2])
    assert not np.allclose(before[folds != 2], after[folds != 2])


def test_platt_keeps_the_fold_decision_at_sigmoid_b() -> None:
    latent, y = calibrated_population(n=3000, seed=4)
    params = fit_calibration("platt", 0.5 * latent + 0.7, y)
    assert params["a"] > 0
    assert calibrated_threshold(params) == pytest.approx(float(sigmoid(np.array(params["b"]))))
    z = np.random.default_rng(5).normal(0, 3, 1000)
    calibrated = apply_calibration(params, z)
    assert np.array_equal(calibrated >= calibrated_threshold(params), z >= 0)
    iso = fit_calibration("isotonic", latent, y)
    assert np.all(np.diff(apply_calibration(iso, np.sort(z))) >= 0)


def test_write_calibration_of_a_cached_run(tmp_path: Path) -> None:
    """A run cached by the protocol (with its cells) gives the report and the diagram."""
    from training.study import write_calibration
    from training.train import TrainConfig

    latent, y = calibrated_population(n=1000, seed=6)
    subjects = np.array([f"s{i}" for i in range(len(y))])
    run_file = tmp_path / "abc.npz"
    np.savez(
        run_file,
        scores=np.stack([sigmoid(2 * latent), sigmoid(2 * latent + 0.5)]),
        thresholds=np.full((2, len(y)), 0.4),
        folds=np.stack([np.arange(len(y)) % 5, np.arange(len(y)) % 4]),
        subjects=subjects,
        labels=y,
        cost=json.dumps({}),
        config=json.dumps(TrainConfig().to_dict(), default=str),
    )
    result = write_calibration(run_file, tmp_path / "out", tmp_path / "no-data", tmp_path)
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved["ece"]) == {"raw", "centred", "platt", "isotonic"}
    assert saved["final"]["platt"]["method"] == "platt"
