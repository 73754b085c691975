"""How much do test-time views add? Trains a recipe's 3 CV fold models (deterministic) and
scores their held-out subjects with 1, 2, 4 and 8 dihedral views.

    python -m experiments.tta_views --data ../shared/data/cnmc \
        --config runs/improved-v2b/config.json

Prints per fold balanced accuracy / weighted F1 / AUC (threshold from the fold's validation
subjects, scored with the same views), their mean and the pooled out-of-fold AUC.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from experiments.common import add_data_flags, images_and_folds
from training.data import CachedImages
from training.evaluate import choose_threshold, classification_metrics
from training.models import dihedral_views
from training.train import TrainConfig, train_model

# 2 views: the image and its mirrored half turn (index 6 of the 8 dihedral views)
VIEW_SUBSETS = {1: [0], 2: [0, 6], 4: [0, 1, 2, 3], 8: list(range(8))}


def score(model: keras.Model, images: CachedImages, n_views: int) -> np.ndarray:
    x = tf.convert_to_tensor(images.pixels, tf.float32)
    views = tf.split(dihedral_views(x, 8), 8)
    scores = [
        np.asarray(model.predict(views[i], batch_size=256, verbose=0)).reshape(-1)
        for i in VIEW_SUBSETS[n_views]
    ]
    return np.asarray(np.mean(scores, axis=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flags(parser)
    parser.add_argument("--config", type=Path, required=True, help="a run's config.json")
    args = parser.parse_args(argv)

    config = TrainConfig.from_dict(json.loads(args.config.read_text())["config"])
    images, folds = images_and_folds(
        args.data, config.input_size, config.crop_fraction, args.cache_dir
    )
    oof = {n: np.zeros(len(images.labels)) for n in VIEW_SUBSETS}
    per_fold: dict[int, list[tuple[float, float, float]]] = {n: [] for n in VIEW_SUBSETS}
    for split in folds:
        masks = split.masks(images.subjects)
        train, val, test = (images.subset(masks[r]) for r in ("train", "validation", "test"))
        model = train_model(config, train, val, label=split.name).model
        for n in VIEW_SUBSETS:
            oof[n][masks["test"]] = score(model, test, n)
            t = choose_threshold(val.labels, score(model, val, n))
            m = classification_metrics(test.labels, oof[n][masks["test"]], t)
            per_fold[n].append((m["balanced_accuracy"], m["weighted_f1"], m["roc_auc"]))
    for n, rows in per_fold.items():
        a = np.array(rows, dtype=float)
        folds_text = " | ".join(f"{r[0]:.3f}/{r[1]:.3f}/{r[2]:.3f}" for r in a)
        pooled = roc_auc_score(images.labels, oof[n])
        print(f"views {n}: {folds_text} MEAN {a.mean(axis=0).round(3)} pooled AUC {pooled:.3f}")


if __name__ == "__main__":
    main()
