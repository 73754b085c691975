"""Input checks: does a decoded image look like what the model was trained on?

The rule's thresholds come from the model card (``contract.card.InputChecks``: written by
the training package, calibrated by ``scripts/calibrate_ood.py`` on the shared C-NMC and
out-of-distribution images: every C-NMC image has >= 96.1 % near-black border and
6.8-25 % foreground; every OOD image <= 0.6 % near-black border). Cards that predate the
group get its defaults.

Geometry: the model can judge only the size it was trained on (450x450 for C-NMC). It was
trained without zoom (cell size is a real feature) and resizes its input itself, so any other
size shows the cell at a scale it never saw: a real cell cropped to 428 or padded to 472
(+-5 % scale) flipped 2-3 of 60 labels, padded to 900 45 of 60 (app/README.md). Nothing in
the pixels says how large the cell should be, so such images are flagged, not normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from contract.card import InputChecks

DEFAULT_RULE = InputChecks()
SAMPLE_SIDE = 100  # features are computed on a strided ~100x100 sample: ~0.2 ms


@dataclass(frozen=True)
class InputCheck:
    """What the input checks found about one image."""

    out_of_distribution: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    border_dark_fraction: float = 0.0
    foreground_fraction: float = 0.0


def check_input(
    pixels: NDArray[np.uint8],
    source_size: tuple[int, int] | None = None,
    rule: InputChecks = DEFAULT_RULE,
) -> InputCheck:
    """Does this look like a C-NMC segmented single cell (a cell on a black background)?

    Geometry first, on ``source_size`` (the size in the file, before any downscale; default:
    the pixels' size): ``too_small`` when a side is under 450, ``unexpected_size`` when one
    is over 450 (and none under).

    Two cheap features on a strided sample: the fraction of near-black pixels in the outer
    10 % band (C-NMC: the background, so ~1) and the fraction of non-black pixels overall (the
    cell: a few to a few tens of percent). Whole smear fields and unsegmented cells have no
    black background and are flagged. A flag means "outside what the model was trained on":
    the probabilities are still returned but should not be trusted.
    """
    height, width = pixels.shape[:2]
    reasons, notes = _geometry(source_size or (width, height), rule.expected_size)
    stride = max(1, min(height, width) // SAMPLE_SIDE)
    sample = pixels[::stride, ::stride]
    # Channel-wise maximum: ~20x faster than .max(axis=2) on a strided view.
    brightest = np.maximum(np.maximum(sample[..., 0], sample[..., 1]), sample[..., 2])
    dark = brightest <= rule.dark_level
    rows, cols = dark.shape
    band = max(1, round(min(rows, cols) * rule.border_width))
    interior = dark[band:-band, band:-band] if rows > 2 * band and cols > 2 * band else dark[:0, :0]
    border_dark = (int(dark.sum()) - int(interior.sum())) / max(1, dark.size - interior.size)
    foreground = 1.0 - float(dark.mean())

    if border_dark < rule.min_border_dark:
        reasons.append("no_black_background")
    if foreground < rule.min_foreground:
        reasons.append("no_cell_visible")
    elif foreground > rule.max_foreground:
        reasons.append("foreground_too_large")
    return InputCheck(
        out_of_distribution=bool(reasons),
        reasons=reasons,
        warnings=notes,
        border_dark_fraction=round(border_dark, 4),
        foreground_fraction=round(foreground, 4),
    )


def _geometry(size: tuple[int, int], expected: tuple[int, int]) -> tuple[list[str], list[str]]:
    """Reason codes and the warning explaining them, for an image of ``size`` (w, h)."""
    if size == expected:
        return [], []
    reason = "too_small" if size[0] < expected[0] or size[1] < expected[1] else "unexpected_size"
    width, height = size
    return [reason], [
        f"{reason}: {width}x{height}; the model was trained on {expected[0]}x{expected[1]} "
        "cells only"
    ]
