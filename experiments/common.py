"""What the experiments share: the cached images and their three CV folds."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data import CachedImages, load_images
from training.splits import Split, cv_splits, subject_table


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="the C-NMC folder")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))


def images_and_folds(
    data: Path, input_size: int, crop_fraction: float, cache_dir: Path | None
) -> tuple[CachedImages, list[Split]]:
    """Images in cache order (the order every saved score array uses) and the CV folds."""
    images = load_images(data, input_size, crop_fraction, cache_dir)
    return images, cv_splits(subject_table(images.subjects, images.labels))
