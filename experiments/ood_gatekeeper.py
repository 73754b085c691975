"""A trained "gatekeeper" for the OOD check: can a CNN tell C-NMC cells from other cells once
colour is taken away? (An experiment; nothing here is shipped.)

    python -m experiments.ood_gatekeeper --data ../shared/data/cnmc --cache-dir /work/runs/cache \
        --models /work/runs/round2/runs/06761ef4112c5e04

Per protocol fold (the fold models' subject lists in ``--models``): a 64 px BN CNN (the
improved architecture with per-image foreground standardisation, no colour descriptors) is
trained for 8 epochs on the fold's training and validation subjects' C-NMC cells (0) against
half of the segmented PBC cells of the seven non-lymphoid types (1), each PBC cell twice: as
it is and recoloured to C-NMC's cell-colour statistics (``ood_stain_probe.recolour``), with
rotation, flips and colour-gain jitter. Scored: the fold's held-out C-NMC subjects (out of
fold) and the other half of the PBC cells, original and recoloured, all eight types. The
threshold is the out-of-fold C-NMC quantile at each target flag rate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from experiments.common import add_data_flags
from experiments.ood_stain_probe import cell_stats, recolour
from training.data import load_images
from training.models import ImprovedOptions, make_improved_model
from training.pbc import PBC_CLASSES, load_pbc


def _augment(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    x = tf.image.rot90(x, tf.random.uniform([], 0, 4, tf.int32))
    x = tf.image.random_flip_left_right(x)
    gain = tf.random.uniform([1, 1, 3], 0.85, 1.15)
    cell = tf.cast(tf.reduce_max(x, -1, keepdims=True) > 10, tf.float32)
    return tf.clip_by_value(x * gain, 0, 255) * cell, y, w


def train_gatekeeper(
    inside: NDArray[np.uint8], outside: NDArray[np.uint8], size: int, epochs: int = 8
) -> keras.Model:
    x = np.concatenate([inside, outside]).astype(np.float32)
    y = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))]).astype(np.float32)
    w = np.where(y == 1, len(inside) / len(outside), 1.0).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).shuffle(len(y), seed=0)
    options = ImprovedOptions(
        widths=(16, 32, 64, 128), dropout=0.5, stain_normalization=True, shape_features=False
    )
    model = make_improved_model(size, options)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-3, weight_decay=1e-4), loss="binary_crossentropy"
    )
    model.fit(data.map(_augment).batch(64), epochs=epochs, verbose=0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_data_flags(parser)
    parser.add_argument("--models", type=Path, required=True, help="a protocol run's fold models")
    parser.add_argument("--pbc-data", type=Path, default=Path("../shared/data/pbc"))
    parser.add_argument("--ood-data", type=Path, default=Path("../shared/data/ood"))
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    images = load_images(args.data, args.size, 0.75, args.cache_dir)
    pbc = load_pbc(args.pbc_data, args.ood_data, args.size, 0.75, args.cache_dir)
    mean, std = cell_stats(images.pixels)
    recoloured = recolour(pbc.pixels, mean, std)
    train_half = np.arange(len(pbc.labels)) % 2 == 0
    outliers = train_half & (pbc.labels != PBC_CLASSES.index("lymphocyte"))
    oof = np.full(len(images.labels), np.nan)
    scores: dict[str, list[NDArray[np.float32]]] = {"original": [], "recoloured": []}
    for meta_path in sorted(args.models.glob("fold-seed*.json")):
        started = time.perf_counter()
        meta = json.loads(meta_path.read_text())
        seen = np.isin(images.subjects, meta["train"] + meta["validation"])
        held_out = np.isin(images.subjects, meta["test"])
        gate = train_gatekeeper(
            images.pixels[seen],
            np.concatenate([pbc.pixels[outliers], recoloured[outliers]]),
            args.size,
        )

        def score(pixels: NDArray[np.uint8], gate: keras.Model = gate) -> NDArray[np.float32]:
            out = gate.predict(pixels.astype(np.float32), batch_size=256, verbose=0)
            return np.asarray(out, np.float32).reshape(-1)

        oof[held_out] = score(images.pixels[held_out])
        scores["original"].append(score(pbc.pixels))
        scores["recoloured"].append(score(recoloured))
        print(f"{meta_path.stem}: {time.perf_counter() - started:.0f} s", flush=True)
    result: dict[str, object] = {}
    for target in (0.01, 0.005):
        threshold = float(np.quantile(oof, 1 - target))
        flagged = {
            key: {
                PBC_CLASSES[i]: round(
                    float(np.mean(s[~train_half & (pbc.labels == i)] > threshold)), 3
                )
                for i in range(len(PBC_CLASSES))
            }
            for key, s in ((k, np.mean(v, axis=0)) for k, v in scores.items())
        }
        result[str(target)] = {"threshold": threshold, "held_out_pbc_flagged": flagged}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
