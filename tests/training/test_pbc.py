"""PBC cells segmented like C-NMC cells: the mask, the canvas, exclusions and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import pbc
from training.pbc import (
    CANVAS,
    PBC_CLASSES,
    cell_mask,
    equivalent_diameter,
    load_pbc,
    segment_pbc_image,
    target_diameter,
)

BACKGROUND = (236, 214, 206)  # PBC's pink-grey slide
CELL = (120, 70, 160)  # purple: a stained white cell
RED_CELL = (212, 168, 162)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.asarray((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2)


def smear(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A purple disc at the centre, red discs around it (one touching), JPEG-like noise."""
    shape = (120, 124)
    rng = np.random.default_rng(seed)
    img = np.tile(np.array(BACKGROUND, float), (*shape, 1))
    red = [disc(shape, c, 14) for c in ((20, 20), (95, 100), (60, 97))]  # last one touches
    for mask in red:
        img[mask] = RED_CELL
    cell = disc(shape, (60, 62), 22)
    img[cell] = CELL
    img[disc(shape, (58, 60), 6)] = (236, 214, 206)  # a pale hole in the cell: filled
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), cell, red


def test_mask_keeps_the_central_cell_and_drops_red_cells() -> None:
    img, cell, red = smear()
    mask = cell_mask(img)
    assert mask[cell].all()  # holes filled
    grown = disc(cell.shape, (60, 62), 22 + pbc.DILATION_PX + 0.5)
    assert not (mask & ~grown).any()  # nothing beyond the 2-px dilation...
    for other in red:
        assert (mask & other & ~grown).sum() == 0  # ...so no red cell, touching or not
    assert mask.sum() > cell.sum()  # the dilation added a rim


def test_nothing_stained_gives_an_empty_mask() -> None:
    plain = np.full((40, 40, 3), BACKGROUND, np.uint8)
    assert not cell_mask(plain).any()
    with pytest.raises(ValueError):
        segment_pbc_image(plain, "x")


def test_canvas_is_centred_on_black_at_a_cnmc_diameter() -> None:
    img, _, _ = smear()
    canvas = segment_pbc_image(img, "monocyte/MO_1.jpg")
    assert canvas.shape == (CANVAS, CANVAS, 3) and canvas.dtype == np.uint8
    fg = canvas.max(axis=-1) > 0
    assert equivalent_diameter(fg) == pytest.approx(target_diameter("monocyte/MO_1.jpg"), rel=0.03)
    ys, xs = np.nonzero(fg)
    assert abs(ys.mean() - CANVAS / 2) < 3 and abs(xs.mean() - CANVAS / 2) < 3
    assert canvas[:40].max() == 0 and canvas[:, -40:].max() == 0
    # the rim keeps the slide's colour instead of fading into black
    assert canvas[fg].max(axis=-1).min() > 60
    low, high = pbc.CNMC_DIAMETER
    diameters = [target_diameter(f"c/{i}.jpg") for i in range(200)]
    assert low <= min(diameters) < low + 10 and high - 10 < max(diameters) <= high


def write_pbc_tree(root: Path) -> None:
    for k, label in enumerate(PBC_CLASSES[:2]):
        (root / "pbc" / label).mkdir(parents=True)
        for i in range(3):
            img, _, _ = smear(10 * k + i)
            Image.fromarray(img).save(root / "pbc" / label / f"X_{i}.jpg", quality=95)
    seg = root / "ood" / "segmented-other-cells"
    seg.mkdir(parents=True)
    (seg / "manifest.csv").write_text(
        "file,source_repo,commit,source_path,class\n"
        f"basophil/basophil_X_1.png,r,c,PBC_dataset_normal_DIB/{PBC_CLASSES[0]}/X_1.jpg,basophil\n"
    )


def test_load_excludes_the_dev_sources_and_reuses_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pbc_tree(tmp_path)
    args = (tmp_path / "pbc", tmp_path / "ood", 32, 0.75, tmp_path / "cache")
    images = load_pbc(*args, log=False)
    assert f"{PBC_CLASSES[0]}/X_1.jpg" not in images.paths and len(images.paths) == 5
    assert list(images.labels) == [0, 0, 1, 1, 1]
    assert images.pixels.shape == (5, 32, 32, 3) and images.pixels.dtype == np.uint8
    assert images.pixels[:, 0, 0].max() == 0 and images.pixels[:, 16, 16].min() > 0
    (cache,) = (tmp_path / "cache").glob("pbc-*.npz")

    def no_segmenting(*_: object) -> np.ndarray:
        raise AssertionError("segmented again despite the cache")

    monkeypatch.setattr(pbc, "segment_pbc_image", no_segmenting)
    again = load_pbc(*args, log=False)
    np.testing.assert_array_equal(again.pixels, images.pixels)
    assert again.paths == images.paths and again.manifest_sha256 == images.manifest_sha256
    stats, labels, excluded = pbc.cached_canvas_stats(cache)
    assert stats.shape == (5, 5) and list(labels) == list(images.labels)
    assert excluded == [f"{PBC_CLASSES[0]}/X_1.jpg"]
