"""training.explain: the explain signature on committed weights, and its sanity checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from training.explain import (
    ExplainableCellClassifier,
    feature_geometry,
    feature_layer,
    heat_on_cell,
    networks_of,
    randomisation_check,
    restore_shipped,
)
from training.models import make_paper_model

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "model_store"
CELLS = sorted((REPO / "tests" / "data" / "cnmc_real").rglob("*.png"))


def _images(n: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in CELLS[:n]])


def test_paper_feature_grid_sits_where_its_receptive_fields_are() -> None:
    model = make_paper_model(256)
    top, side = feature_geometry(model, feature_layer(model))
    # Five valid 3x3 convs and four 2x2 pools: grid cell j is centred on pixel 38.5 + 16 j.
    assert (top, side) == (31.0, 192)


def test_restored_weights_reproduce_the_committed_serving_signature() -> None:
    images = _images(4)
    for version in (STORE / "cnmc-paper-cnn" / "1", STORE / "cnmc-improved-cnn" / "2"):
        model, config, _ = restore_shipped(version)
        module = ExplainableCellClassifier(model, config.input_size, config.crop_fraction)
        loaded = tf.saved_model.load(str(version)).signatures["serving_default"]
        reference = loaded(images=tf.constant(images))["probabilities"].numpy()
        explained = module.explain(tf.constant(images))
        assert np.abs(module.serve(tf.constant(images))["probabilities"] - reference).max() < 1e-6
        assert np.abs(explained["probabilities"].numpy() - reference).max() < 1e-5
        assert explained["class_activation"].shape == images.shape[:3]


def test_committed_explain_versions_classify_exactly_like_the_versions_they_extend() -> None:
    images = _images(len(CELLS))
    for old, new in (
        ("cnmc-paper-cnn/1", "cnmc-paper-cnn/2"),
        ("cnmc-improved-cnn/2", "cnmc-improved-cnn/3"),
    ):
        a, b = (
            tf.saved_model.load(str(STORE / v))
            .signatures["serving_default"](images=tf.constant(images))["probabilities"]
            .numpy()
            for v in (old, new)
        )
        assert np.abs(a - b).max() <= 1e-6


def test_randomised_weights_change_the_paper_models_maps() -> None:
    """Adebayo et al. (2018): a map that survives randomising the weights explains the input,
    not the model. On the cell's pixels, the trained and randomised maps must be unrelated."""
    correlations = randomisation_check(STORE / "cnmc-paper-cnn" / "1", _images(6))
    assert abs(float(np.mean(correlations))) < 0.4


def test_heat_on_cell_counts_only_the_predicted_labels_mass() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[:2] = 200  # top half is cell
    signed = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 3]], np.float32)
    assert heat_on_cell(signed, pixels, positive=True) == pytest.approx(4 / 7)
    assert heat_on_cell(signed, pixels, positive=False) == 0.0
    assert heat_on_cell(np.zeros((4, 4), np.float32), pixels, positive=True) is None
    assert len(networks_of(make_paper_model(128))) == 1
