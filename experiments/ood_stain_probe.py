"""Does the learned OOD check see the cell type, or only the other laboratory's stain?

    python -m experiments.ood_stain_probe --data ../shared/data/cnmc --cache-dir /work/runs/cache \
        --models /work/runs/round2/runs/<digest> --version model_store/cnmc-improved-cnn/<v>

The PBC cells (training/pbc.py) are brighter and pinker than C-NMC cells. This probe gives
every segmented PBC cell C-NMC's colour statistics (Reinhard-style: per channel, the cell
pixels' mean and spread matched to those of all C-NMC cells; background stays black) and
scores the originals and the recoloured cells with the shipped version's own threshold
(``ood_check.threshold`` of ``--version``; members fitted as ``training.ood`` does). If the
recoloured cells are still flagged, the check sees more than colour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from contract.card import CARD_FILE, ModelCard
from experiments.common import add_data_flags
from training.data import load_images
from training.ood import score_fold_models
from training.pbc import PBC_CLASSES, load_pbc


def cell_stats(pixels: NDArray[np.uint8]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    cell = pixels.max(axis=-1) > 10
    values = pixels[cell].astype(np.float64)
    return values.mean(axis=0), values.std(axis=0)


def recolour(
    pixels: NDArray[np.uint8], mean: NDArray[np.float64], std: NDArray[np.float64]
) -> NDArray[np.uint8]:
    out = np.zeros_like(pixels)
    for i, image in enumerate(pixels):
        cell = image.max(axis=-1) > 10
        m, s = cell_stats(image)
        values = (image[cell].astype(np.float64) - m) / np.maximum(s, 1e-6) * std + mean
        out[i][cell] = np.clip(np.round(values), 11, 255).astype(np.uint8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_data_flags(parser)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--version", type=Path, required=True)
    parser.add_argument("--pbc-data", type=Path, default=Path("../shared/data/pbc"))
    parser.add_argument("--ood-data", type=Path, default=Path("../shared/data/ood"))
    parser.add_argument("--views", type=int, default=1)
    args = parser.parse_args()
    card = ModelCard.model_validate_json((args.version / CARD_FILE).read_text())
    assert card.ood_check is not None
    size = card.input.model_input_size[0]
    crop = float(card.training.config.get("crop_fraction", 0.75))
    images = load_images(args.data, size, crop, args.cache_dir)
    pbc = load_pbc(args.pbc_data, args.ood_data, size, crop, args.cache_dir)
    mean, std = cell_stats(images.pixels)
    extra = {"original": pbc.pixels, "recoloured": recolour(pbc.pixels, mean, std)}
    members = score_fold_models(
        args.models, images.pixels, images.labels, images.subjects, extra, args.views
    )
    threshold = card.ood_check.threshold
    result: dict[str, dict[str, float]] = {}
    for key in extra:
        score = np.mean([m.extra_score[key] for m in members], axis=0)
        result[key] = {
            name: round(float(np.mean(score[pbc.labels == i] > threshold)), 4)
            for i, name in enumerate(PBC_CLASSES)
        }
        result[key]["median_score"] = round(float(np.median(score)), 2)
    print(json.dumps({"threshold": threshold, "flagged": result}, indent=1))


if __name__ == "__main__":
    main()
