"""PBC pretraining machinery on tiny generated data: cache, determinism, weight transfer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tests.training.test_pbc import write_pbc_tree
from tests.training.test_training import TINY_CONFIG
from training import pretrain
from training.data import load_images
from training.models import make_model
from training.pretrain import PretrainData, backbone, pretrain_digest, pretrained_backbone
from training.protocol import Cells, repeat_seed, repeated_subject_folds, run_recipe
from training.study import fit_score_for
from training.train import TrainConfig, train_model

CONFIG = dataclasses.replace(TINY_CONFIG, epochs=1, pretrain="pbc", pretrain_epochs=1)


@pytest.fixture
def pbc_data(tmp_path: Path) -> PretrainData:
    write_pbc_tree(tmp_path)
    return PretrainData(tmp_path / "pbc", tmp_path / "ood", tmp_path / "cache")


def count_pretraining(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seeds: list[int] = []
    real = pretrain.train_cell_types

    def counted(config: TrainConfig, cells: Any, seed: int) -> Any:
        seeds.append(seed)
        return real(config, cells, seed)

    monkeypatch.setattr(pretrain, "train_cell_types", counted)
    return seeds


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_pretraining_is_seeded_and_cached(
    pbc_data: PretrainData, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds = count_pretraining(monkeypatch)
    first, path = pretrained_backbone(CONFIG, pbc_data, seed=3)
    assert path is not None and path.is_file() and seeds == [3]
    again, _ = pretrained_backbone(CONFIG, pbc_data, seed=3)
    assert seeds == [3]  # read back, not trained again
    assert_same(first, again)
    uncached = dataclasses.replace(pbc_data, cache_dir=None)
    assert_same(pretrained_backbone(CONFIG, uncached, seed=3)[0], first)  # same seed, same run
    other, _ = pretrained_backbone(CONFIG, uncached, seed=4)
    assert not all(np.array_equal(x, y) for x, y in zip(other, first, strict=True))
    # the pretrained backbone is not the freshly initialised one
    fresh = backbone(make_model(CONFIG.spec, CONFIG.improved)).get_weights()
    assert not all(np.array_equal(x, y) for x, y in zip(fresh, first, strict=True))


def test_digest_ignores_fine_tuning_only_fields() -> None:
    digest = pretrain_digest(CONFIG, "data")
    same = dataclasses.replace(CONFIG, epochs=7, seed=9, class_weights=False, ship="cv_ensemble")
    assert pretrain_digest(same, "data") == digest
    for change in ({"input_size": 48}, {"pretrain_epochs": 2}, {"hed_jitter": 0.05}):
        assert pretrain_digest(dataclasses.replace(CONFIG, **change), "data") != digest  # type: ignore[arg-type]
    assert pretrain_digest(CONFIG, "other data") != digest


def test_fine_tuning_starts_from_the_pretrained_backbone(
    cnmc_tiny: Path, pbc_data: PretrainData, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = load_images(cnmc_tiny, CONFIG.input_size, CONFIG.crop_fraction)
    loaded: list[list[np.ndarray]] = []
    real_load = pretrain.load_backbone

    def checked_load(model: keras.Model, weights: list[np.ndarray]) -> None:
        real_load(model, weights)
        assert_same(backbone(model).get_weights(), weights)  # right after loading
        loaded.append(weights)

    monkeypatch.setattr(pretrain, "load_backbone", checked_load)
    seeds = count_pretraining(monkeypatch)
    cold = train_model(CONFIG, images, images, pretrain_data=pbc_data, pretrain_seed=5)
    warm = train_model(CONFIG, images, images, pretrain_data=pbc_data, pretrain_seed=5)
    assert seeds == [5] and len(loaded) == 2
    expected, _ = pretrained_backbone(CONFIG, pbc_data, seed=5)
    assert_same(loaded[0], expected)
    # a cache hit leaves the same random state as a fresh pretraining: same fine-tuned model
    assert_same(cold.model.get_weights(), warm.model.get_weights())
    with pytest.raises(ValueError, match="pretrain_data"):
        train_model(CONFIG, images, images)


def test_protocol_folds_of_a_repeat_share_one_backbone(
    cnmc_tiny: Path, pbc_data: PretrainData, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds = count_pretraining(monkeypatch)
    images = load_images(cnmc_tiny, CONFIG.input_size, CONFIG.crop_fraction)
    cells = Cells(np.asarray(images.subjects), np.asarray(images.labels, dtype=np.int64))
    folds = repeated_subject_folds(cells, n_folds=2, repeats=1, seed=0)
    config = dataclasses.replace(CONFIG, test_time_dihedral=False)
    run_recipe("pbc", fit_score_for(config, images, {}, None, pbc_data), cells, folds)
    assert seeds == [0]  # one pretraining for the repeat, not one per fold
    assert repeat_seed(1003) == repeat_seed(1000) == 1000 != repeat_seed(3)


def test_pretraining_needs_the_improved_architecture() -> None:
    with pytest.raises(ValueError, match="improved"):
        dataclasses.replace(CONFIG, architecture="paper")
    assert "pretrain" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(CONFIG.to_dict()) == CONFIG
