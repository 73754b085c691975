"""Out-of-fold study of the learned OOD check (training/ood.py) on a protocol run's fold models.

    python -m experiments.ood_check --data ../shared/data/cnmc --cache-dir /work/runs/cache \
        --models /work/runs/round2/runs/<digest> --config training/reports/protocol/v2-128px.json \
        --extra segmented=../shared/data/ood/segmented-other-cells \
        --out training/reports/ood/<name>

Scores every C-NMC cell with the fold model that never saw its subject (Gaussian fitted on
that model's training subjects) and every image of each ``--extra`` folder (one subfolder per
class) with every fold model, averaged as the exported ensemble averages them. Reports the
cross-fitted flag rate on genuine cells of unseen subjects, the threshold, and what is caught
by class; ``--target`` is the largest share of genuine cells that may be flagged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from contract.imaging import decode_file
from experiments.common import add_data_flags
from training.data import load_images
from training.ood import MemberScores, cross_fitted_flag_rate, score_fold_models
from training.preprocess import resize_for_model
from training.train import TrainConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def load_folder(root: Path, size: int, crop: float) -> tuple[NDArray[np.uint8], list[str]]:
    """Every image under ``root`` (class = first subfolder, or the folder's own name)."""
    pixels, classes = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rgb = decode_file(path)
        pixels.append(np.asarray(resize_for_model(rgb[None], size, crop))[0])
        rel = path.relative_to(root).parts
        classes.append(rel[0] if len(rel) > 1 else root.name)
    return np.stack(pixels), classes


def logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)))


def summarise(
    members: list[MemberScores],
    labels: NDArray[np.int64],
    extra_classes: dict[str, list[str]],
    targets: tuple[float, ...],
) -> dict[str, Any]:
    n = len(labels)
    oof = np.full(n, np.nan)
    fold = np.full(n, -1)
    for k, m in enumerate(members):
        oof[m.test_index], fold[m.test_index] = m.test_score, k
    result: dict[str, Any] = {"members": len(members), "cells": n, "targets": {}}
    for target in targets:
        rate, per_fold = cross_fitted_flag_rate(oof, fold, target)
        threshold = float(np.quantile(oof, 1.0 - target))
        entry: dict[str, Any] = {
            "threshold": threshold,
            "cnmc_oof_flag_rate_cross_fitted": rate,
            "cnmc_oof_flag_rate_by_class": {
                name: float(np.mean(oof[labels == c] > threshold))
                for c, name in ((0, "hem"), (1, "all"))
            },
            "per_fold_thresholds": per_fold,
            "extra": {},
        }
        for key, classes in extra_classes.items():
            score = np.mean([m.extra_score[key] for m in members], axis=0)
            z = np.mean([logit(m.extra_p[key]) - logit(np.array(m.threshold)) for m in members], 0)
            flagged = score > threshold
            by_class: dict[str, Any] = {}
            for name in sorted(set(classes)):
                here = np.array([c == name for c in classes])
                by_class[name] = {
                    "n": int(here.sum()),
                    "flagged": float(np.mean(flagged[here])),
                    "called_all": float(np.mean(z[here] > 0)),
                    "called_all_not_flagged": int(np.sum((z[here] > 0) & ~flagged[here])),
                    "score_median": float(np.median(score[here])),
                }
            entry["extra"][key] = by_class
        result["targets"][str(target)] = entry
    result["oof_score_quantiles"] = {
        q: float(np.quantile(oof, float(q))) for q in ("0.5", "0.9", "0.98", "0.99")
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flags(parser)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--extra", action="append", default=[], help="name=folder")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--target", type=float, nargs="+", default=[0.02, 0.015, 0.01])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    raw = json.loads(args.config.read_text())
    config = TrainConfig.from_dict(raw.get("config", raw))
    images = load_images(args.data, config.input_size, config.crop_fraction, args.cache_dir)
    extra, extra_classes = {}, {}
    for item in args.extra:
        key, folder = item.split("=", 1)
        extra[key], extra_classes[key] = load_folder(
            Path(folder), config.input_size, config.crop_fraction
        )
    members = score_fold_models(
        args.models, images.pixels, images.labels, images.subjects, extra, args.views
    )
    result = summarise(members, images.labels, extra_classes, tuple(args.target))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
