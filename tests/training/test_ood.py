"""The learned OOD check and the calibrated ensemble: machinery on generated data."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.models import ImprovedOptions, make_improved_model
from training.ood import (
    GaussianFit,
    MahalanobisScore,
    cross_fitted_flag_rate,
    fit_gaussian,
    predict_with_features,
)
from training.shipping import CalibratedEnsemble


def two_blobs(n: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = rng.normal(size=(n, d)) + labels[:, None] * 3.0
    return features, labels


def test_distance_small_in_distribution_large_outside() -> None:
    features, labels = two_blobs()
    fit = fit_gaussian(features, labels)
    inside = fit.distances(features).mean()
    outside = fit.distances(features + 8.0).mean()
    # ~d for Gaussian data; far points are far
    assert 3.0 < inside < 9.0
    assert outside > 10 * inside


def test_in_graph_score_matches_numpy() -> None:
    features, labels = two_blobs()
    raw = fit_gaussian(features, labels)
    fit = GaussianFit(raw.means, raw.precision, scale=2.5)
    layer = MahalanobisScore(fit.means, fit.precision, fit.scale)
    graph = np.asarray(layer(tf.constant(features[:20], tf.float32)))
    np.testing.assert_allclose(graph, fit.distances(features[:20]), rtol=1e-4, atol=1e-4)


def test_cross_fitted_flag_rate_near_target_on_exchangeable_scores() -> None:
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=5000)
    folds = np.arange(5000) % 5
    rate, thresholds = cross_fitted_flag_rate(scores, folds, 0.02)
    assert 0.01 < rate < 0.03
    assert len(thresholds) == 5
    # a fold whose scores are shifted up is flagged more than the target: the rate is measured,
    # not assumed
    shifted = scores.copy()
    shifted[folds == 0] += 3.0
    rate_shifted, _ = cross_fitted_flag_rate(shifted, folds, 0.02)
    assert rate_shifted > 0.06


def test_calibrated_ensemble_centres_on_member_thresholds() -> None:
    tf.keras.utils.set_random_seed(0)
    options = ImprovedOptions(widths=(4, 8), shape_features=True)
    members = [make_improved_model(16, options) for _ in range(2)]
    pixels = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3)).astype(np.uint8)
    per_member = [predict_with_features(m, pixels) for m in members]
    thresholds = [float(per_member[0][0][0]), float(per_member[1][0][0])]
    fits = [fit_gaussian(f, np.array([0, 1, 0, 1, 0, 1])) for _, f in per_member]
    ensemble = CalibratedEnsemble(members, thresholds, a=1.0, b=0.0, fits=fits)
    p, ood = ensemble.with_ood(tf.constant(pixels, tf.float32))
    # image 0 sits exactly on both members' thresholds: z = 0, so P = sigmoid(b) = 0.5
    assert abs(float(p[0]) - 0.5) < 1e-4
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    z = np.mean(
        [logit(pm) - logit(t) for (pm, _), t in zip(per_member, thresholds, strict=True)], axis=0
    )
    np.testing.assert_allclose(np.asarray(p), 1 / (1 + np.exp(-z)), atol=1e-4)
    expected_ood = np.mean(
        [fit.distances(f) for fit, (_, f) in zip(fits, per_member, strict=True)], axis=0
    )
    np.testing.assert_allclose(np.asarray(ood), expected_ood, rtol=1e-3, atol=1e-3)
    # b moves the operating point: the threshold in probability space is sigmoid(b)
    shifted = CalibratedEnsemble(members, thresholds, a=1.0, b=1.0, fits=fits)
    assert (
        abs(float(shifted(tf.constant(pixels[:1], tf.float32))[0, 0]) - 1 / (1 + np.exp(-1))) < 1e-4
    )
