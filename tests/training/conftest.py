"""A tiny C-NMC-layout dataset generated per test session (BMP + PNG + prelim CSV + quirks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ALL_SUBJECTS = {"UID_1": 6, "UID_2": 5, "UID_3": 4, "UID_4": 4}
HEM_SUBJECTS = {"UID_H1": 8, "UID_H2": 6, "UID_h3": 3}  # lower-case h as in the real data
SIZE = 48


def synthetic_cell(rng: np.random.Generator, label: str) -> np.ndarray:
    """A disc on black: 'all' cells larger and bluer, so a tiny model can learn them."""
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = rng.uniform(15, 20) if label == "all" else rng.uniform(7, 11)
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius**2
    colour = np.array([120, 80, 200] if label == "all" else [200, 90, 120], dtype=float)
    noise = rng.normal(0, 10, (SIZE, SIZE, 3))
    img[disc] = np.clip(colour + noise[disc], 1, 255).astype(np.uint8)
    return img


@pytest.fixture(scope="session")
def cnmc_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cnmc_tiny")
    rng = np.random.default_rng(0)
    for label, subjects in (("all", ALL_SUBJECTS), ("hem", HEM_SUBJECTS)):
        for k, (subject, n) in enumerate(subjects.items()):
            folder = root / "training_data" / f"fold_{k % 3}" / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext = "bmp" if i % 2 == 0 else "png"
                Image.fromarray(synthetic_cell(rng, label)).save(
                    folder / f"{subject}_{i + 1}_1_{label}.{ext}"
                )
    # The same pixels under another subject's name, as in the published set.
    dup_src = root / "training_data" / "fold_0" / "all" / "UID_1_1_1_all.bmp"
    dup_dst = root / "training_data" / "fold_1" / "all" / "UID_2_99_1_all.png"
    Image.open(dup_src).save(dup_dst)
    (root / "training_data" / "fold_0" / "hem" / "UID_H1_50_1_hem.bmp").write_bytes(b"not a bmp")
    (root / "training_data" / "fold_0" / "hem" / "notes.txt").write_text("stray file")
    prelim = root / "C-NMC_test_prelim_phase_data"
    prelim.mkdir()
    rows = ["Patient_ID,new_names,labels"]
    for i, (patient, label) in enumerate(
        [("UID_57", "all"), ("UID_57", "all"), ("UID_H49", "hem"), ("UID_H49", "hem")], 1
    ):
        Image.fromarray(synthetic_cell(rng, label)).save(prelim / f"{i}.bmp")
        rows.append(f"{patient},{i}.bmp,{1 if label == 'all' else 0}")
    (prelim / "C-NMC_test_prelim_phase_data_labels.csv").write_text("\n".join(rows) + "\n")
    return root
