"""Pretraining the improved model's conv blocks on the PBC cell types, before C-NMC.

The backbone (every layer up to the global average pooling) is first trained as an 8-class
PBC cell-type classifier, with the C-NMC recipe's input pipeline (crop fraction, input size,
augmentation, optimiser); its weights are then copied into the C-NMC model, whose own head
is trained from scratch with the backbone as the whole network is fine-tuned.

The pretrained backbone never sees a C-NMC cell, so one backbone can serve every fold of a
cross-validation without leaking a held-out subject into training. It is therefore cached on
disk by (digest of everything that shapes it, seed): the protocol's folds of one repeat, and
every recipe that differs only in fine-tuning, reuse it instead of pretraining again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import layers

from training.data import CachedImages
from training.models import make_model
from training.pbc import PBC_CLASSES, load_pbc

if TYPE_CHECKING:
    from training.train import TrainConfig

# Fields of TrainConfig that only the C-NMC fine-tuning reads: a change in them keeps the
# cached backbone valid. Every other field (geometry, architecture, optimiser, augmentation,
# pretrain_epochs) goes into the pretraining digest.
FINE_TUNE_ONLY = frozenset(
    {
        "epochs",
        "class_weights",
        "select_epoch",
        "seed",
        "test_time_dihedral",
        "tta_views",
        "ship",
        "validation_fraction",
        "validation_max_share",
    }
)


@dataclass(frozen=True)
class PretrainData:
    """Where the pretraining cells are, and where cells and backbones are cached."""

    pbc_root: Path
    ood_root: Path  # its sources are excluded from the PBC cells (see training.pbc)
    cache_dir: Path | None = None


def pretrain_digest(config: TrainConfig, data_key: str) -> str:
    """Identifies a pretrained backbone: the config minus fine-tuning fields, and the data."""
    part = {k: v for k, v in config.to_dict().items() if k not in FINE_TUNE_ONLY}
    text = json.dumps({"pretrain": part, "data": data_key, "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def backbone(model: keras.Model) -> keras.Model:
    """The layers of ``model`` up to its global average pooling (its conv blocks)."""
    pools = [x for x in model.layers if isinstance(x, layers.GlobalAveragePooling2D)]
    if len(pools) != 1:
        raise ValueError(f"{model.name} has no single global pooling layer to pretrain up to")
    return keras.Model(model.inputs, pools[0].output, name=f"{model.name}_backbone")


def cell_type_model(config: TrainConfig) -> tuple[keras.Model, keras.Model]:
    """(8-class PBC model, its backbone): the C-NMC model's backbone with a softmax head."""
    trunk = backbone(make_model(config.spec, config.improved))
    x = layers.Dropout(config.improved.dropout)(trunk.output)
    outputs = layers.Dense(len(PBC_CLASSES), activation="softmax", name="cell_type")(x)
    return keras.Model(trunk.inputs, outputs, name="pbc_cell_type"), trunk


def train_cell_types(
    config: TrainConfig, cells: CachedImages, seed: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Train the cell-type model for ``config.pretrain_epochs``; (backbone weights, log)."""
    from training.train import Progress, make_dataset, make_optimizer, set_seed

    set_seed(seed)
    model, trunk = cell_type_model(config)
    steps = math.ceil(len(cells.labels) / config.batch_size) * config.pretrain_epochs
    model.compile(
        optimizer=make_optimizer(config, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    dataset = make_dataset(
        cells, config.batch_size, True, config.augment, None, seed, config.blur_noise,
        config.colour_jitter, config.hed_jitter, config.scale_jitter,
    )  # fmt: skip
    progress = Progress(len(cells.labels), config.pretrain_epochs, "last", f"pretrain-seed{seed}")
    fit = model.fit(
        dataset, epochs=config.pretrain_epochs, verbose=0, callbacks=[progress], shuffle=False
    )
    log = {
        "seed": seed,
        "n_cells": len(cells.labels),
        "history": {k: [float(v) for v in vals] for k, vals in fit.history.items()},
        "seconds_per_epoch": float(np.median(progress.epoch_seconds)),
    }
    return trunk.get_weights(), log


def pretrained_backbone(
    config: TrainConfig, data: PretrainData, seed: int
) -> tuple[list[np.ndarray], Path | None]:
    """The backbone weights pretrained on PBC for ``config`` and ``seed``: read from the
    cache (``<cache_dir>/pretrained/pbc-<digest>-seed<seed>.npz``) or trained and cached.
    Returns the weights and the cache file (None without a cache dir)."""
    cells = load_pbc(data.pbc_root, data.ood_root, config.input_size, config.crop_fraction,
                     data.cache_dir)  # fmt: skip
    digest = pretrain_digest(config, cells.manifest_sha256)
    path = None
    if data.cache_dir is not None:
        path = data.cache_dir / "pretrained" / f"pbc-{digest}-seed{seed}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                print(f"[pretrain] reusing {path}", flush=True)
                return [z[f"w{i}"] for i in range(len(z.files) - 1)], path
    started = time.monotonic()
    weights, log = train_cell_types(config, cells, seed)
    log["seconds"] = time.monotonic() - started
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        arrays = {f"w{i}": w for i, w in enumerate(weights)}
        np.savez(tmp, log=np.array(json.dumps(log)), **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return weights, path


def load_backbone(model: keras.Model, weights: list[np.ndarray]) -> None:
    """Copy pretrained backbone weights into a freshly built C-NMC model of the same config."""
    trunk = backbone(model)
    expected = [w.shape for w in trunk.get_weights()]
    if expected != [w.shape for w in weights]:
        raise ValueError("pretrained backbone does not match this model's conv blocks")
    trunk.set_weights(weights)
