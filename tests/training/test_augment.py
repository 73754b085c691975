"""Stain (HED) and scale augmentation: the transform itself, the pipeline, the config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training.data import load_images
from training.study import config_digest, read_config
from training.train import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    TrainConfig,
    hed_jitter,
    make_dataset,
    zoom_about_centre,
)

PROTOCOL = Path(__file__).resolve().parents[2] / "training" / "reports" / "protocol"


def numpy_hed_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hed -> affine -> hed2rgb, written out (without the clip at 0)."""
    log_adjust = np.log(1e-6)
    hed = (np.log(np.maximum(rgb / 255.0, 1e-6)) / log_adjust) @ HED_FROM_RGB
    out = np.exp(((hed * alpha + beta) * log_adjust) @ RGB_FROM_HED)
    return np.clip(out, 0.0, 1.0) * 255.0


def stained_pixels() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.uniform(20, 250, (6, 6, 3)).astype(np.float32)


def test_hed_jitter_without_change_gives_the_pixels_back() -> None:
    x = stained_pixels()
    out = hed_jitter(tf.constant(x), tf.ones(3), tf.zeros(3)).numpy()
    np.testing.assert_allclose(out, x, atol=0.05)


def test_hed_jitter_matches_the_skimage_formulae() -> None:
    x = stained_pixels()
    alpha, beta = np.array([1.04, 0.97, 1.01]), np.array([0.03, -0.02, 0.01])
    out = hed_jitter(tf.constant(x), tf.constant(alpha, tf.float32), tf.constant(beta, tf.float32))
    np.testing.assert_allclose(out.numpy(), numpy_hed_jitter(x, alpha, beta), atol=0.05)
    # more haematoxylin darkens red and green (its optical density) more than blue
    more_h = hed_jitter(tf.constant(x), tf.ones(3), tf.constant([0.05, 0.0, 0.0])).numpy()
    drop = (x - more_h).reshape(-1, 3).mean(axis=0)
    assert drop[0] > drop[2] > 0 and drop[1] > drop[2]


def test_zoom_keeps_the_size_and_changes_the_cell_area() -> None:
    img = np.zeros((32, 32, 3), np.float32)
    img[12:20, 12:20] = 200.0

    def area(factor: float) -> int:
        zoomed = zoom_about_centre(tf.constant(img), tf.constant(factor)).numpy()
        return int((zoomed > 100).any(-1).sum())

    assert area(0.8) < area(1.0) == 64 < area(1.25)
    assert zoom_about_centre(tf.constant(img), tf.constant(1.25)).shape == (32, 32, 3)


def test_augmented_pipeline_keeps_background_black_and_is_seeded(cnmc_tiny: Path) -> None:
    images = load_images(cnmc_tiny, 32, 0.9)
    black = images.pixels.max(axis=-1) == 0

    def first_batch(hed: float, scale: float, seed: int = 0) -> np.ndarray:
        ds = make_dataset(images, 64, False, True, None, seed, False, 1.0, hed, scale)
        return np.asarray(next(iter(ds))[0])

    plain, stained = first_batch(0.0, 0.0), first_batch(0.05, 0.0)
    np.testing.assert_array_equal(stained, first_batch(0.05, 0.0))
    assert not np.array_equal(stained, first_batch(0.05, 0.0, seed=1))
    assert np.abs(stained - plain).mean() > 1.0
    # flips and turns keep a centred disc's black corners black; so must the stain jitter
    corners = np.zeros_like(black)
    corners[:, :4, :4] = corners[:, -4:, -4:] = True
    assert black[corners].all() and stained.max(axis=-1)[corners].max() == 0
    zoomed = first_batch(0.0, 0.2)  # the largest discs, zoomed, reach into 4-px corners
    assert zoomed.shape == plain.shape and zoomed.max(axis=-1)[:, :2, :2].max() == 0
    area_change = np.abs((zoomed.max(-1) > 10).sum((1, 2)) - (plain.max(-1) > 10).sum((1, 2)))
    assert area_change.max() > 10


def test_new_options_leave_existing_configs_and_digests_alone() -> None:
    config = read_config(PROTOCOL / "v2-128px.json")
    assert "hed_jitter" not in config.to_dict() and "scale_jitter" not in config.to_dict()
    hed = read_config(PROTOCOL / "v2-128px-hed.json")
    assert hed.hed_jitter > 0 and dataclasses.replace(hed, hed_jitter=0.0) == config
    assert TrainConfig.from_dict(hed.to_dict()) == hed
    digest = config_digest(config, 5, 2, 0, "m")
    assert config_digest(dataclasses.replace(config, hed_jitter=0.0), 5, 2, 0, "m") == digest
    assert config_digest(hed, 5, 2, 0, "m") != digest
    raw = json.loads((PROTOCOL / "v2-128px.json").read_text())["config"]
    assert set(config.to_dict()) | set(config.improved.__dataclass_fields__) >= set(raw)


@pytest.mark.parametrize("change", [{"hed_jitter": -0.1}, {"scale_jitter": 1.0}])
def test_jitter_ranges_are_checked(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="jitter"):
        dataclasses.replace(TrainConfig(), **change)  # type: ignore[arg-type]
