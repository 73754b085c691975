"""Does a threshold chosen on the other folds' out-of-fold scores transfer to a fold?

    python -m experiments.threshold_transfer --data ../shared/data/cnmc runs/improved-v2c \
        runs/experiments/cj2.npz 'runs/experiments/v2s1.npz+runs/experiments/v2s2.npz'

Each source is a training run folder (its ``cv_predictions.npz``), an ``.npz`` written by
``experiments.cv_scores``, or several joined by ``+`` (their scores averaged). Prints, per
fold, balanced accuracy / weighted F1 / AUC @ threshold, and the means. The export runs the
same check on the members of a ``ship=cv_ensemble`` model
(``training.pipeline.threshold_transfer``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments.common import add_data_flags, images_and_folds
from training.evaluate import choose_threshold, classification_metrics


def out_of_fold(source: str, test_masks: list[np.ndarray]) -> np.ndarray:
    """Scores in cache order; a run's cv_predictions.npz is stored fold by fold."""
    if "+" in source:
        return np.asarray(np.mean([out_of_fold(s, test_masks) for s in source.split("+")], axis=0))
    path = Path(source)
    if path.is_dir():
        scores = np.load(path / "cv_predictions.npz")["p"]
        order = np.concatenate([np.flatnonzero(m) for m in test_masks])
        full = np.zeros(len(test_masks[0]))
        full[order] = scores
        return full
    return np.asarray(np.load(path)["oof"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flags(parser)
    parser.add_argument("--input-size", type=int, default=64, help="cache geometry of the runs")
    parser.add_argument("--crop-fraction", type=float, default=0.75)
    parser.add_argument("sources", nargs="+")
    args = parser.parse_args(argv)

    images, folds = images_and_folds(args.data, args.input_size, args.crop_fraction, args.cache_dir)
    y = images.labels
    masks = [split.masks(images.subjects)["test"] for split in folds]
    for source in args.sources:
        p = out_of_fold(source, masks)
        rows = []
        for held_out in masks:
            t = choose_threshold(y[~held_out], p[~held_out])
            m = classification_metrics(y[held_out], p[held_out], t)
            rows.append((m["balanced_accuracy"], m["weighted_f1"], m["roc_auc"], t))
        a = np.array(rows, dtype=float)
        folds_text = " | ".join(f"{r[0]:.3f}/{r[1]:.3f}/{r[2]:.3f}@{r[3]:.2f}" for r in a)
        means = "/".join(f"{v:.3f}" for v in a[:, :3].mean(axis=0))
        print(f"{source}: {folds_text}  MEAN {means}")


if __name__ == "__main__":
    main()
