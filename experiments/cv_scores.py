"""Full 3-fold CV of a recipe; saves its out-of-fold and validation scores and a result line.

    python -m experiments.cv_scores --data ../shared/data/cnmc --base-config \
        runs/improved-h2/config.json --tag paper-s1 --overrides '{"arch": "paper", "seed": 1}' \
        --out-dir runs/experiments

``--overrides`` replaces fields of the base config (flat names, as on the ``training run``
command line); ``"arch": "paper"`` starts from the paper recipe instead. Writes
``<out-dir>/<tag>.npz`` (``oof``, ``y``, ``pval_<fold>``, ``yval_<fold>``, in cache order)
and appends one JSON line to ``<out-dir>/results.jsonl`` (training/reports/cv-results.jsonl
holds the lines of the runs quoted in the READMEs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from experiments.common import add_data_flags, images_and_folds
from training.pipeline import run_split
from training.train import TrainConfig, paper_config

SUMMARY_KEYS = ("balanced_accuracy", "weighted_f1", "roc_auc")


def recipe(base_config: Path, overrides: dict[str, Any]) -> TrainConfig:
    over = {k: v for k, v in overrides.items() if k != "arch"}
    if overrides.get("arch") == "paper":
        return TrainConfig.from_dict(paper_config().to_dict() | over)
    base = json.loads(base_config.read_text())["config"]
    return TrainConfig.from_dict(TrainConfig.from_dict(base).to_dict() | over)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flags(parser)
    parser.add_argument("--base-config", type=Path, required=True, help="a run's config.json")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--overrides", default="{}", help="JSON object of config fields")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)

    overrides = json.loads(args.overrides)
    config = recipe(args.base_config, overrides)
    images, folds = images_and_folds(
        args.data, config.input_size, config.crop_fraction, args.cache_dir
    )
    oof = np.zeros(len(images.labels), np.float32)
    saved: dict[str, Any] = {}
    rows = []
    t0 = time.monotonic()
    for split in folds:
        outcome = run_split(config, images, split)
        assert outcome.test is not None  # every CV fold has test subjects
        oof[split.masks(images.subjects)["test"]] = outcome.p_test
        saved[f"pval_{split.name}"], saved[f"yval_{split.name}"] = outcome.p_val, outcome.y_val
        rows.append(
            {k: outcome.test[k] for k in (*SUMMARY_KEYS, "sensitivity", "specificity")}
            | {"thr": outcome.threshold, "epoch": outcome.result.selected_epoch}
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(args.out_dir / f"{args.tag}.npz", oof=oof, y=images.labels, **saved)
    line = {
        "tag": args.tag,
        "over": overrides,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in SUMMARY_KEYS},
        "pooled_auc": float(roc_auc_score(images.labels, oof)),
        "folds": rows,
        "seconds": time.monotonic() - t0,
    }
    with (args.out_dir / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    print("RESULT", json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
