"""Measure the out-of-distribution flag on the shared data: share of C-NMC passed, OOD flagged.

.venv/bin/python -m scripts.calibrate_ood [/work/shared/data]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from app.input_checks import check_input
from contract.imaging import decode_image


def main(root: Path) -> None:
    sets = {
        "cnmc": sorted((root / "cnmc").rglob("*.png")) + sorted((root / "cnmc").rglob("*.bmp")),
        "ood": sorted((root / "ood").rglob("*.jpg")),
    }
    for name, files in sets.items():
        flagged, border, fg, seconds = 0, [], [], 0.0
        for path in files:
            pixels = decode_image(path.read_bytes(), max_pixels=50_000_000).pixels
            start = time.perf_counter()
            check = check_input(pixels, pixels.shape[1::-1])
            seconds += time.perf_counter() - start
            flagged += check.out_of_distribution
            border.append(check.border_dark_fraction)
            fg.append(check.foreground_fraction)
        n = len(files)
        print(
            f"{name}: n={n} flagged={flagged} ({flagged / max(n, 1):.1%}) "
            f"border_dark=[{min(border):.3f}, {max(border):.3f}] "
            f"foreground=[{min(fg):.3f}, {max(fg):.3f}] "
            f"check={seconds / max(n, 1) * 1000:.3f} ms/image"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data"))
