"""Calibrating out-of-fold scores, so that ``blast_probability`` means what it says on unseen
subjects, and measuring how well it does.

The input is the protocol's threshold-centred logit ``z = logit(score) - logit(threshold)``
(``protocol.centred_logits``): each fold model's scores on one scale, its own decision point
at 0. Two maps from ``z`` to a probability:

- ``platt``: ``p = sigmoid(a * z + b)`` (temperature ``1 / a`` and a shift), two numbers.
  Strictly increasing for ``a > 0``, so it keeps every decision: the fold threshold
  (``z = 0``) maps to ``sigmoid(b)``, and ``p >= sigmoid(b)`` exactly when ``z >= 0``
  (``calibrated_threshold``).
- ``isotonic``: a non-decreasing step function of ``z`` (knots ``z``, values ``p``, linear
  between knots, constant outside), applied with ``numpy.interp``. More flexible, but its
  flat steps can merge cells on both sides of ``z = 0``, so a decision must still be taken
  on ``z``, not on the calibrated probability.

Both are fitted to the population of the out-of-fold cells (its share of ALL cells is its
prior), and both are measured *out of fold* by cross-fitting (``cross_fitted``): the cells
of fold ``k`` are calibrated by a map fitted on the other folds' cells only, so the ECE
"after" is not measured on the labels the map was fitted to. (The other folds' *scores*
come from models that trained on fold ``k``'s subjects; only the two numbers or the step
function fitted to them reach fold ``k``.) ``fit_calibration`` on all out-of-fold cells gives
the parameters to export with the model.

Expected calibration error: 15 equal-width bins of the predicted probability, the weighted
mean over bins of ``|observed ALL fraction - mean predicted probability|``; the
subject-weighted variant gives every subject the same total weight (two normal donors hold
785 of the 805 normal cells, so cell-weighted ECE is mostly theirs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from training.protocol import Cells, FloatArray, RecipeRun, centred_logits

Method = Literal["platt", "isotonic"]
METHODS: tuple[Method, ...] = ("platt", "isotonic")
N_BINS = 15


def sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(1 / (1 + np.exp(-np.asarray(x, dtype=np.float64))))


def reliability_bins(
    p: FloatArray, y: NDArray[np.int64], n_bins: int = N_BINS, weights: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per equal-width bin of ``p``: mean predicted probability, observed positive fraction,
    total weight (NaN means for empty bins)."""
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    bins = np.minimum((np.asarray(p) * n_bins).astype(np.int64), n_bins - 1)
    total = np.asarray(np.bincount(bins, weights=w, minlength=n_bins), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=w * p, minlength=n_bins) / total
        observed = np.bincount(bins, weights=w * y, minlength=n_bins) / total
    return confidence, observed, total


def expected_calibration_error(
    p: FloatArray, y: NDArray[np.int64], n_bins: int = N_BINS, weights: FloatArray | None = None
) -> float:
    confidence, observed, total = reliability_bins(p, y, n_bins, weights)
    filled = total > 0
    gaps = np.abs(observed[filled] - confidence[filled])
    return float(np.sum(total[filled] * gaps) / np.sum(total[filled]))


def subject_weights(subjects: NDArray[np.str_]) -> FloatArray:
    """``1 / cells of the subject``: every subject weighs the same in total."""
    _, inverse, counts = np.unique(subjects, return_inverse=True, return_counts=True)
    return np.asarray(1.0 / counts[inverse], dtype=np.float64)


def fit_calibration(method: Method, z: FloatArray, y: NDArray[np.int64]) -> dict[str, Any]:
    """The calibration map of ``method`` fitted on ``(z, y)``, as JSON-ready parameters that
    ``apply_calibration`` (or the service, without scikit-learn) can evaluate."""
    if len(np.unique(y)) != 2:
        raise ValueError("calibration needs cells of both classes")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # Practically unregularised: two parameters, thousands of cells.
        model = LogisticRegression(C=1e6).fit(z.reshape(-1, 1), y)
        return {"method": "platt", "a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
        return {
            "method": "isotonic",
            "z": [float(v) for v in iso.X_thresholds_],
            "p": [float(v) for v in iso.y_thresholds_],
        }
    raise ValueError(f"unknown calibration method {method!r}")


def apply_calibration(params: dict[str, Any], z: FloatArray) -> FloatArray:
    if params["method"] == "platt":
        return sigmoid(params["a"] * np.asarray(z) + params["b"])
    if params["method"] == "isotonic":
        return np.asarray(np.interp(z, params["z"], params["p"]), dtype=np.float64)
    raise ValueError(f"unknown calibration method {params['method']!r}")


def calibrated_threshold(params: dict[str, Any]) -> float:
    """The calibrated probability at the fold threshold (``z = 0``). For Platt with ``a > 0``
    it is ``sigmoid(b)`` and ``p >= it`` is the same decision as ``score >= threshold``."""
    return float(apply_calibration(params, np.zeros(1))[0])


def cross_fitted(
    method: Method, z: FloatArray, y: NDArray[np.int64], folds: NDArray[np.int64]
) -> FloatArray:
    """Each fold's cells calibrated by a map fitted on the other folds' cells (one repeat)."""
    out = np.full(len(z), np.nan)
    for k in np.unique(folds):
        held = folds == k
        out[held] = apply_calibration(fit_calibration(method, z[~held], y[~held]), z[held])
    return out


def final_calibration(
    labels: NDArray[np.int64], run: RecipeRun, method: Method = "platt"
) -> dict[str, Any]:
    """The map to export with the model: fitted on every out-of-fold cell of every repeat,
    applied by the service to ``z = logit(P(ALL)) - logit(threshold)`` of the shipped model
    (e.g. ``{"method": "platt", "a": ..., "b": ...}``; its decision threshold on the
    calibrated probability is ``calibrated_threshold``, ``sigmoid(b)`` for Platt)."""
    z = centred_logits(run.scores, run.thresholds)
    return fit_calibration(method, z.ravel(), np.tile(labels, len(z)))


def calibration_study(cells: Cells, run: RecipeRun) -> dict[str, Any]:
    """Out-of-fold ECE (cell- and subject-weighted, averaged over repeats) of the raw scores,
    of ``sigmoid(z)`` (centred, not fitted: each fold's threshold at 0.5) and of each method
    cross-fitted over folds; the final maps (``final_calibration``); and the pooled
    probabilities for a reliability diagram."""
    y, by_subject = cells.labels, subject_weights(cells.subjects)
    z = centred_logits(run.scores, run.thresholds)
    probabilities: dict[str, list[FloatArray]] = {
        "raw": list(run.scores),
        "centred": [sigmoid(z_r) for z_r in z],
    }
    for method in METHODS:
        probabilities[method] = [
            cross_fitted(method, z_r, y, folds_r)
            for z_r, folds_r in zip(z, run.fold_index(), strict=True)
        ]
    ece = {
        name: {
            "cells": float(np.mean([expected_calibration_error(p, y) for p in ps])),
            "subjects": float(
                np.mean([expected_calibration_error(p, y, weights=by_subject) for p in ps])
            ),
        }
        for name, ps in probabilities.items()
    }
    final = {method: final_calibration(y, run, method) for method in METHODS}
    return {
        "ece": ece,
        "final": final,
        "platt_threshold": calibrated_threshold(final["platt"]),
        "probabilities": {name: np.concatenate(ps) for name, ps in probabilities.items()},
        "labels": np.tile(y, len(z)),
    }


def reliability_diagram(
    probabilities: dict[str, FloatArray], y: NDArray[np.int64], path: Path, title: str
) -> None:
    """Observed ALL fraction against mean predicted probability per bin, one curve each;
    a marker's area grows with its bin's share of the cells (sparse bins jump about)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, p in probabilities.items():
        confidence, observed, total = reliability_bins(p, y)
        filled = total > 0
        ece = expected_calibration_error(p, y)
        (line,) = axes.plot(
            confidence[filled], observed[filled], linewidth=1, label=f"{name} (ECE {ece:.3f})"
        )
        share = total[filled] / total.sum()
        axes.scatter(
            confidence[filled], observed[filled], s=4 + 400 * share, color=line.get_color()
        )
    axes.set(xlabel="predicted P(ALL)", ylabel="observed ALL fraction", xlim=(0, 1), ylim=(0, 1))
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
