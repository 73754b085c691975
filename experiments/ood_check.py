"""Out-of-fold study of the learned OOD check and calibration on a protocol run's fold models.

    python -m experiments.ood_check --data ../shared/data/cnmc --cache-dir /work/runs/cache \
        --models /work/runs/round2/runs/<digest> --config training/reports/protocol/v2-128px.json \
        --extra segmented=../shared/data/ood/segmented-other-cells --out /tmp/ood

Scores every C-NMC cell with the fold model that never saw its subject (its Gaussian fitted
on that model's training subjects), and every image of each ``--extra`` folder (one subfolder
per class) with every fold model, averaged as the shipped ensemble averages them
(``training.shipping.analyse``). Prints, per ``--target`` (the largest share of genuine
cells that may be flagged): the threshold, the cross-fitted flag rate on genuine cells of
unseen subjects, and what is flagged and called ``all`` by class.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from experiments.common import add_data_flags
from training.data import load_images
from training.ood import load_image_folder, score_fold_models
from training.shipping import analyse, out_of_fold
from training.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
        extra[key], extra_classes[key] = load_image_folder(
            Path(folder), config.input_size, config.crop_fraction
        )
    members = score_fold_models(
        args.models, images.pixels, images.labels, images.subjects, extra, args.views
    )
    result = {
        str(target): dataclasses.asdict(
            analyse(out_of_fold(members, len(images.labels)), images.labels, extra_classes, target)
        )
        for target in args.target
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
