"""How far batched results drift from single-image results, per committed model, on this CPU.

    python -m scripts.batch_numerics                              # this CPU's kernels
    ONEDNN_MAX_CPU_ISA=AVX2 python -m scripts.batch_numerics      # AVX2 kernels on AVX-512

CPU kernels (oneDNN) may sum in a batch-size-dependent order, so a row's probability can
change in the last float32 bits with the size of the batch it ran in. This prints, for each
committed model version, the largest |batched - single| over the committed real cells and
synthetic cells at several batch sizes, whether any label changed, and whether the same
call repeated gives the same bits. ``app.batching.BATCH_TOLERANCE`` is set from these
numbers with margin.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from app.batching import BATCH_TOLERANCE
from app.registry import ModelRegistry, probe_images
from app.store import ModelStore
from contract.imaging import decode_file

REPO = Path(__file__).resolve().parents[1]
SIZES = (2, 3, 4, 5, 8, 16)


def real_cells() -> list[NDArray[np.uint8]]:
    paths = sorted((REPO / "tests" / "data" / "cnmc_real").rglob("*.png"))
    paths += sorted((REPO / "tests" / "data" / "cnmc_bmp").glob("*.bmp"))
    return [decode_file(p) for p in paths]


def measure(registry: ModelRegistry, name: str, version: int) -> dict[str, object]:
    loaded = registry.load(name, version)
    runtime, card = loaded.runtime, loaded.card
    positive = card.labels.index(card.positive_label)
    images = np.stack(real_cells() + list(probe_images(16, seed=7)))
    singles = np.concatenate([runtime.predict(image[None]) for image in images])
    repeat = np.concatenate([runtime.predict(image[None]) for image in images])
    n_labels = len(card.labels)
    worst: dict[str, float] = {}
    worst_score: dict[str, float] = {}  # the card's ood_check score: the column after them
    label_changes = flag_changes = 0
    for size in SIZES:
        batched = np.concatenate(
            [runtime.predict(images[i : i + size]) for i in range(0, len(images), size)]
        )
        difference = np.abs(batched - singles)
        worst[str(size)] = float(np.max(difference[:, :n_labels]))
        label_changes += int(
            np.sum(
                (batched[:, positive] >= card.threshold) != (singles[:, positive] >= card.threshold)
            )
        )
        if card.ood_check is not None:
            worst_score[str(size)] = float(np.max(difference[:, n_labels]))
            limit = card.ood_check.threshold
            flag_changes += int(
                np.sum((batched[:, n_labels] > limit) != (singles[:, n_labels] > limit))
            )
    row: dict[str, object] = {
        "model": f"{name}/{version}",
        "images": len(images),
        "max_abs_diff_by_batch_size": worst,
        "max_abs_diff": max(worst.values()),
        "label_changes": label_changes,
        "batch1_repeatable": bool(np.array_equal(singles, repeat)),
        "within_tolerance": max(worst.values()) <= BATCH_TOLERANCE,
    }
    if worst_score:
        row |= {
            "max_abs_ood_score_diff_by_batch_size": worst_score,
            "max_abs_ood_score_diff": max(worst_score.values()),
            "ood_flag_changes": flag_changes,
            "ood_score_within_tolerance": max(worst_score.values()) <= BATCH_TOLERANCE,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    registry = ModelRegistry(ModelStore(args.model_store))
    rows = [
        measure(registry, name, version)
        for name, versions in registry.store.models().items()
        for version in versions
    ]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "(default: best this CPU has)")
    print(f"ONEDNN_MAX_CPU_ISA={isa}; tolerance {BATCH_TOLERANCE:g}")
    for row in rows:
        print(
            f"{row['model']:<24} max |batched-single| {row['max_abs_diff']:.3g}  "
            f"label changes {row['label_changes']}  batch-1 repeatable {row['batch1_repeatable']}"
        )
        if "max_abs_ood_score_diff" in row:
            print(
                f"{'':<24} max |batched-single| ood_score {row['max_abs_ood_score_diff']:.3g}  "
                f"ood flag changes {row['ood_flag_changes']}"
            )
    if args.out:
        args.out.write_text(json.dumps({"isa": isa, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
