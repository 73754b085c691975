"""A learned out-of-distribution check: how far a cell lies from the training cells in the
classifier's own feature space.

Method: a class-conditional Gaussian with one shared covariance on the classifier's
penultimate features (the pooled convolutional features joined with the whole-cell
descriptors: area, colour mean and spread), as in Lee et al., "A Simple Unified Framework
for Detecting Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS 2018). The
score of a cell is its smallest squared Mahalanobis distance to a class mean. The covariance
is shrunk (Ledoit-Wolf) because a fold model's training cells (~2,000) are few for 135
dimensions. A neutrophil, a platelet or a cell stained by another laboratory has features
(granules, lobed nuclei, colour) the network never produced for a C-NMC cell, so its distance
is large even when the classifier's sigmoid is confident.

Each member of the shipped ensemble gets its own Gaussian, fitted on its training subjects'
cells, and its distances are divided by the median distance of its *validation* subjects'
cells (subjects it did not fit on), so members' scores are on one scale and can be averaged.
The whole computation is a few matrix products inside the exported graph
(:class:`MahalanobisScore`), so the service needs no model code: it reads ``ood_score`` and
compares it with the card's threshold.

The threshold is chosen on *out-of-fold* scores: every C-NMC cell scored by the fold model
that never saw its subject, its Gaussian fitted without that subject. The flag rate on
genuine cells of unseen subjects is measured by cross-fitting the threshold over the folds
(choose it on the other folds' cells, count flags on this fold's), so the reported rate is
not the rate the threshold was tuned to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from contract.imaging import decode_file
from training.evaluate import choose_threshold
from training.models import dihedral_views
from training.preprocess import resize_for_model

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class GaussianFit:
    """Class means [C, D], shared precision [D, D], and the member's distance scale."""

    means: FloatArray
    precision: FloatArray
    scale: float = 1.0

    def distances(self, features: FloatArray) -> FloatArray:
        """Smallest squared Mahalanobis distance to a class mean, divided by ``scale``."""
        d = []
        for mean in self.means:
            c = features - mean
            d.append(np.einsum("nd,de,ne->n", c, self.precision, c))
        return np.asarray(np.min(np.stack(d), axis=0) / self.scale, dtype=np.float64)


def fit_gaussian(features: FloatArray, labels: NDArray[np.int64]) -> GaussianFit:
    """Class means and the Ledoit-Wolf-shrunk covariance of the class-centred features."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    return GaussianFit(means, np.linalg.inv(covariance))


def feature_head(model: keras.Model) -> keras.Model:
    """``model`` with two outputs: P(all) and the input of its final dense layer."""
    final = model.layers[-1]
    if not isinstance(final, keras.layers.Dense):
        raise ValueError(f"{model.name}: the last layer is not a Dense layer")
    return keras.Model(model.inputs, [model.outputs[0], final.input], name=f"{model.name}_feat")


def predict_with_features(
    model: keras.Model, pixels: NDArray[np.uint8], views: int = 1, batch_size: int = 64
) -> tuple[FloatArray, FloatArray]:
    """P(all) and penultimate features, each averaged over ``views`` dihedral views."""
    head = feature_head(model)
    ps, fs = [], []
    for i in range(0, len(pixels), batch_size):
        x = tf.convert_to_tensor(pixels[i : i + batch_size], tf.float32)
        n = int(x.shape[0])
        p, f = head(dihedral_views(x, views) if views > 1 else x, training=False)
        ps.append(np.asarray(p).reshape(views, n).mean(axis=0))
        fs.append(np.asarray(f).reshape(views, n, -1).mean(axis=0))
    return np.concatenate(ps).astype(np.float64), np.concatenate(fs).astype(np.float64)


@keras.saving.register_keras_serializable(package="training")
class MahalanobisScore(keras.layers.Layer):  # type: ignore[misc]
    """[N, D] features -> [N] smallest squared Mahalanobis distance / scale, in the graph."""

    def __init__(self, means: Any, precision: Any, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.means_value = np.asarray(means, np.float32)
        self.precision_value = np.asarray(precision, np.float32)
        self.scale = float(scale)

    def build(self, input_shape: Any) -> None:
        self.means = self.add_weight(
            name="means", shape=self.means_value.shape, trainable=False,
            initializer=keras.initializers.Constant(self.means_value),
        )  # fmt: skip
        self.precision = self.add_weight(
            name="precision", shape=self.precision_value.shape, trainable=False,
            initializer=keras.initializers.Constant(self.precision_value),
        )  # fmt: skip

    def call(self, features: tf.Tensor) -> tf.Tensor:
        c = features[:, None, :] - self.means[None, :, :]  # [N, C, D]
        d = tf.einsum("ncd,de,nce->nc", c, self.precision, c)
        return tf.reduce_min(d, axis=1) / self.scale

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "means": self.means_value.tolist(),
            "precision": self.precision_value.tolist(),
            "scale": self.scale,
        }


# --- out-of-fold scores from a protocol run's fold models ------------------------------
@dataclass
class MemberScores:
    """One fold model's contribution: its fit, and its scores on held-out and extra images."""

    name: str
    threshold: float
    fit: GaussianFit
    model: keras.Model  # the fold model itself, so shipping does not load it again
    meta: dict[str, Any]  # its fold-seed<k>.json: subjects, saved threshold, selected epoch
    test_index: NDArray[np.int64]
    test_p: FloatArray
    test_score: FloatArray
    extra_p: dict[str, FloatArray]
    extra_score: dict[str, FloatArray]


def score_fold_models(
    models_dir: Path,
    pixels: NDArray[np.uint8],
    labels: NDArray[np.int64],
    subjects: NDArray[np.str_],
    extra: dict[str, NDArray[np.uint8]],
    views: int = 1,
) -> list[MemberScores]:
    """For every ``fold-seed*.keras`` in ``models_dir`` (written by the protocol): fit its
    Gaussian on its training subjects, scale by its validation subjects, score its test
    subjects (out-of-fold) and every ``extra`` image set."""
    out = []
    for meta_path in sorted(models_dir.glob("fold-seed*.json")):
        meta = json.loads(meta_path.read_text())
        model = keras.models.load_model(meta_path.with_suffix(".keras"), compile=False)
        p, features = predict_with_features(model, pixels, views)
        train = np.isin(subjects, meta["train"])
        validation = np.isin(subjects, meta["validation"])
        test = np.isin(subjects, meta["test"])
        # The threshold is chosen again on the validation subjects with these views: with
        # the views the protocol used it is the saved one; with others it is what the member
        # would have chosen had it been run that way.
        threshold = choose_threshold(labels[validation], p[validation])
        fit = fit_gaussian(features[train], labels[train])
        scale = float(np.median(fit.distances(features[validation])))
        fit = GaussianFit(fit.means, fit.precision, scale)
        extra_p, extra_score = {}, {}
        for key, images in extra.items():
            ep, ef = predict_with_features(model, images, views)
            extra_p[key], extra_score[key] = ep, fit.distances(ef)
        out.append(
            MemberScores(
                meta_path.stem,
                threshold,
                fit,
                model,
                meta,
                np.flatnonzero(test),
                p[test],
                fit.distances(features[test]),
                extra_p,
                extra_score,
            )
        )
        print(
            f"[ood] {meta_path.stem}: {int(test.sum())} held-out cells scored; threshold "
            f"{threshold:.4f} (saved {float(meta['threshold']):.4f})",
            flush=True,
        )
    return out


def cross_fitted_flag_rate(
    scores: FloatArray, folds: NDArray[np.int64], target: float
) -> tuple[float, list[float]]:
    """Flag rate on each fold's genuine cells with the threshold chosen on the other folds
    (their ``1 - target`` quantile); returns the overall rate and the per-fold thresholds."""
    flagged = 0
    thresholds = []
    for k in np.unique(folds):
        here = folds == k
        t = float(np.quantile(scores[~here], 1.0 - target))
        thresholds.append(t)
        flagged += int(np.sum(scores[here] > t))
    return flagged / len(scores), thresholds


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def load_image_folder(root: Path, size: int, crop: float) -> tuple[NDArray[np.uint8], list[str]]:
    """Every image under ``root``, preprocessed as the model's signature does, with its class
    (the first subfolder's name, or the folder's own name)."""
    pixels, classes = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rgb = decode_file(path)
        pixels.append(np.asarray(resize_for_model(rgb[None], size, crop))[0])
        rel = path.relative_to(root).parts
        classes.append(rel[0] if len(rel) > 1 else root.name)
    return np.stack(pixels), classes
