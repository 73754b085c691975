"""PBC cells (another laboratory's 8 normal blood-cell types) segmented like C-NMC cells.

The PBC JPEGs (360x363) show one white cell (or platelet cluster, or erythroblast) on its
smear background among red cells. C-NMC cells are segmented onto black and 154-245 px across
on a 450x450 canvas; a network pretrained on PBC, or an out-of-distribution check taught by
it, should see PBC cells in that form. Each image goes through the same steps that made the
shared ``ood/segmented-other-cells`` set (its README): pixels whose colour is far from the
smear background are "stained"; the stained component at the centre is the cell; its holes
are filled and it is dilated by 2 px (a rim of background, as C-NMC crops have); everything
outside is black; the cell is rescaled so its diameter falls in C-NMC's range (drawn per file,
from a hash of its name, so the result is the same on every run) and centred on the canvas.

The stain is not matched to C-NMC: PBC cells stay brighter and pinker.

The source images of the development OOD set (``segmented-other-cells/manifest.csv``) and of
``ood/unsegmented-lymphocytes`` are excluded, so nothing trained here has seen them.

Citation (CC BY 4.0): A. Acevedo, A. Merino, S. Alférez, Á. Molina, L. Boldú, J. Rodellar,
"A dataset of microscopic peripheral blood cell images for development of automatic
recognition systems", Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from training.data import CachedImages, Problem, decode_rgb

PBC_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
"""Class order of the pretraining head (label index)."""
CANVAS = 450
CNMC_DIAMETER = (154.0, 245.0)
"""Equivalent-circle diameters of C-NMC cells on their 450x450 canvas (px)."""
STAIN_DISTANCE = 40.0
"""RGB distance from the background colour above which a pixel counts as stained, unless it
has a red cell's colour (``red_cell_colour``): red cells touching the cell would otherwise
join its component."""
RED_CELL_MAX_BLUE_OVER_GREEN = 20.0
RED_CELL_MIN_RED_OVER_GREEN = 30.0
DILATION_PX = 2


@dataclass(frozen=True)
class PbcFile:
    path: Path
    label: str


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """The smear background: the median colour of the brightest 30% of pixels (the bare
    slide is the brightest thing on a PBC image; cells and red cells are darker)."""
    flat = rgb.reshape(-1, 3).astype(np.float64)
    brightness = flat.sum(axis=1)
    return np.asarray(np.median(flat[brightness >= np.percentile(brightness, 70)], axis=0))


def red_cell_colour(x: np.ndarray) -> np.ndarray:
    """Pixels coloured like red cells (eosin only: red above green, blue not): red cells
    are as far from the background as pale cytoplasm, but the stained cell's blue holds
    up. Measured on PBC images: flags ~96% of red-cell pixels, ~5% of the cells'."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return np.asarray(
        (b - g < RED_CELL_MAX_BLUE_OVER_GREEN) & (r - g > RED_CELL_MIN_RED_OVER_GREEN)
    )


def central_component(mask: np.ndarray) -> np.ndarray:
    """The connected component at the centre of ``mask`` (or the one nearest to it)."""
    components, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    h, w = components.shape
    label = components[h // 2, w // 2]
    if label == 0:  # the centre fell on a gap: take the stained pixel nearest to it
        ys, xs = np.nonzero(components)
        nearest = np.argmin((ys - h / 2) ** 2 + (xs - w / 2) ** 2)
        label = components[ys[nearest], xs[nearest]]
    return np.asarray(components == label)


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a mask's pixels (the mask itself if it is degenerate)."""
    ys, xs = np.nonzero(mask)
    points = np.stack([ys, xs], axis=1).astype(np.float64)
    try:
        hull = Delaunay(points[ConvexHull(points).vertices])
    except QhullError:
        return mask
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    grid = np.moveaxis(np.mgrid[y0:y1, x0:x1], 0, -1).reshape(-1, 2)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = (hull.find_simplex(grid) >= 0).reshape(y1 - y0, x1 - x0)
    return out


def cell_mask(rgb: np.ndarray, threshold: float = STAIN_DISTANCE) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the cell at the image's centre (empty if nothing stained).

    Red-cell-coloured pixels are left out when finding the cell (so touching red cells do
    not join it), then those inside the cell's convex hull are taken back: a neutrophil's or
    eosinophil's cytoplasm can be as pink as a red cell.
    """
    x = rgb.astype(np.float64)
    stained = np.linalg.norm(x - background_colour(rgb), axis=-1) > threshold
    core = central_component(stained & ~red_cell_colour(x))
    if not core.any():
        return core
    mask = central_component(stained & convex_hull(core)) | core
    mask = ndimage.binary_fill_holes(mask)
    return np.asarray(ndimage.binary_dilation(mask, iterations=DILATION_PX))


def equivalent_diameter(mask: np.ndarray) -> float:
    """Diameter of the circle with the mask's area."""
    return float(2.0 * np.sqrt(mask.sum() / np.pi))


def target_diameter(name: str) -> float:
    """A C-NMC-like diameter for this file, the same on every run (uniform in the range)."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64
    low, high = CNMC_DIAMETER
    return low + u * (high - low)


def place_on_canvas(rgb: np.ndarray, mask: np.ndarray, diameter: float) -> np.ndarray:
    """The masked cell scaled to ``diameter`` and centred (by its centroid) on black."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    half = int(np.ceil(np.sqrt(((ys - cy) ** 2 + (xs - cx) ** 2).max()))) + 2
    top, left = round(float(cy)) - half, round(float(cx)) - half
    side = 2 * half + 1
    # Pixels and mask are resized separately, then masked: the rim keeps background colour
    # rather than blending into black.
    pad = ((half, half), (half, half))
    window = (slice(top + half, top + half + side), slice(left + half, left + half + side))
    pixels = np.pad(rgb, (*pad, (0, 0)), mode="edge")[window]
    inside = np.pad(mask, pad)[window]
    new = max(1, round(side * diameter / equivalent_diameter(mask)))
    scaled = np.asarray(Image.fromarray(pixels).resize((new, new), Image.Resampling.BILINEAR))
    scaled_mask = np.asarray(
        Image.fromarray(inside.astype(np.uint8) * 255).resize((new, new), Image.Resampling.BILINEAR)
    )
    cell = np.where((scaled_mask >= 128)[..., None], scaled, 0).astype(np.uint8)
    canvas = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    offset = (CANVAS - new) // 2
    src = slice(max(0, -offset), max(0, -offset) + min(new, CANVAS))
    dst = slice(max(0, offset), max(0, offset) + min(new, CANVAS))
    canvas[dst, dst] = cell[src, src]
    return canvas


def segment_pbc_image(rgb: np.ndarray, name: str) -> np.ndarray:
    """One PBC image -> its cell on a 450x450 black canvas at a C-NMC-like diameter."""
    mask = cell_mask(rgb)
    if not mask.any():
        raise ValueError("no stained pixels")
    return place_on_canvas(rgb, mask, target_diameter(name))


def canvas_stats(canvas: np.ndarray) -> tuple[float, float, float, float, float]:
    """(foreground fraction, equivalent diameter, mean R, G, B of the cell) of a canvas."""
    mask = canvas.max(axis=-1) > 0
    r, g, b = canvas[mask].mean(axis=0) if mask.any() else (0.0, 0.0, 0.0)
    return float(mask.mean()), equivalent_diameter(mask), float(r), float(g), float(b)


def excluded_sources(ood_root: Path) -> set[str]:
    """``<class>/<file>`` of PBC images in the shared OOD sets (development data), by the
    segmented set's manifest and by the unsegmented lymphocytes' file names."""
    out: set[str] = set()
    manifest = ood_root / "segmented-other-cells" / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                out.add("/".join(row["source_path"].split("/")[-2:]))
    for path in sorted((ood_root / "unsegmented-lymphocytes").glob("*.jpg")):
        out.add(f"lymphocyte/{path.name}")
    return out


def pbc_files(root: Path, exclude: set[str]) -> tuple[list[PbcFile], list[str]]:
    """The PBC images by class folder, minus ``exclude``; also the excluded ones found."""
    kept: list[str] = []
    dropped: list[str] = []
    for label in PBC_CLASSES:
        for path in sorted((root / label).glob("*.jpg")):
            rel = f"{label}/{path.name}"
            (dropped if rel in exclude else kept).append(rel)
    if not kept:
        raise FileNotFoundError(f"no PBC images in {root}/<{'|'.join(PBC_CLASSES)}>/*.jpg")
    return [PbcFile(root / rel, rel.split("/")[0]) for rel in kept], dropped


def _cache_key(files: list[PbcFile], size: int, crop_fraction: float) -> str:
    h = hashlib.sha256(
        f"pbc-v1|{size}|{crop_fraction:.4f}|{STAIN_DISTANCE}|{DILATION_PX}|{CNMC_DIAMETER}\n".encode()
    )
    for f in files:
        st = f.path.stat()
        h.update(f"{f.path.parent.name}/{f.path.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_pbc(
    root: Path,
    ood_root: Path,
    size: int,
    crop_fraction: float,
    cache_dir: Path | None = None,
    log: bool = True,
) -> CachedImages:
    """Segmented PBC cells at the model's input geometry; ``labels`` index ``PBC_CLASSES``.

    ``subjects`` is ``"pbc"`` for all: the PBC dataset does not say which donor a cell came
    from. Cached as ``<cache_dir>/pbc-<key>.npz`` (key: file list, geometry, segmentation).
    """
    from training.preprocess import resize_for_model

    files, dropped = pbc_files(root, excluded_sources(ood_root))
    key = _cache_key(files, size, crop_fraction)
    cache_file = cache_dir / f"pbc-{key}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return CachedImages(
                z["pixels"], z["labels"], z["subjects"], list(meta["paths"]), key, [],
                [Problem(**p) for p in meta["problems"]],
            )  # fmt: skip
    arrays, labels, paths, problems, stats = [], [], [], [], []
    start = time.monotonic()
    for i, f in enumerate(files, 1):
        rel = f"{f.label}/{f.path.name}"
        try:
            canvas = segment_pbc_image(decode_rgb(f.path), rel)
        except Exception as exc:  # report it, never skip silently
            problems.append(Problem(rel, f"not segmented: {type(exc).__name__}: {exc}"))
            continue
        arrays.append(resize_for_model(canvas[None], size, crop_fraction).numpy()[0])
        stats.append(canvas_stats(canvas))
        labels.append(PBC_CLASSES.index(f.label))
        paths.append(rel)
        if log and (i % 500 == 0 or i == len(files)):
            rate = i / max(time.monotonic() - start, 1e-9)
            print(f"  pbc: {i}/{len(files)} segmented, {rate:.0f} img/s", flush=True)
    if log:
        print(f"  pbc: {len(dropped)} images excluded (shared OOD sets' sources)", flush=True)
    images = CachedImages(
        np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8),
        np.array(labels, dtype=np.int64),
        np.array(["pbc"] * len(labels), dtype=str),
        paths,
        key,
        [],
        problems,
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        meta = {"paths": paths, "excluded": dropped, "problems": [p.__dict__ for p in problems]}
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            pixels=images.pixels,
            labels=images.labels,
            subjects=images.subjects,
            canvas_stats=np.array(stats, dtype=np.float64).reshape(-1, 5),
            meta=np.array(json.dumps(meta)),
        )
        tmp.replace(cache_file)
    return images


def cached_canvas_stats(cache_file: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``canvas_stats`` rows, labels and the excluded files recorded in a PBC cache file."""
    with np.load(cache_file, allow_pickle=False) as z:
        return z["canvas_stats"], z["labels"], list(json.loads(str(z["meta"]))["excluded"])


def dev_set_stats(segmented_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``canvas_stats`` rows and labels of the shared segmented-other-cells images."""
    rows, labels = [], []
    for label in PBC_CLASSES:
        for path in sorted((segmented_dir / label).glob("*.png")):
            rows.append(canvas_stats(decode_rgb(path)))
            labels.append(PBC_CLASSES.index(label))
    return np.array(rows).reshape(-1, 5), np.array(labels, dtype=np.int64)


def _columns(a: np.ndarray, b: np.ndarray) -> list[str]:
    def col(i: int, scale: float = 1.0) -> str:
        return (
            f"{a[:, i].mean() * scale:.1f} ({a[:, i].std() * scale:.1f}) / "
            f"{b[:, i].mean() * scale:.1f} ({b[:, i].std() * scale:.1f})"
        )

    def rgb(x: np.ndarray) -> str:
        return "(" + ", ".join(f"{v:.0f}" for v in x[:, 2:].mean(axis=0)) + ")"

    return [col(0, 100), col(1), f"{rgb(a)} / {rgb(b)}"]


def comparison_table(ours: np.ndarray, our_labels: np.ndarray, dev: np.ndarray,
                     dev_labels: np.ndarray) -> str:  # fmt: skip
    """Markdown: per class, mean (sd) foreground fraction, diameter and cell colour, ours vs
    the development set's."""
    lines = [
        "| class | n ours / dev | foreground % ours / dev | diameter px ours / dev "
        "| mean RGB ours / dev |",
        "|---|---|---|---|---|",
    ]
    for k, label in [*enumerate(PBC_CLASSES), (-1, "all")]:
        a = ours if k < 0 else ours[our_labels == k]
        b = dev if k < 0 else dev[dev_labels == k]
        if len(a) and len(b):
            lines.append(f"| {label} | {len(a)} / {len(b)} | " + " | ".join(_columns(a, b)) + " |")
    return "\n".join(lines) + "\n"


def contact_sheet(root: Path, ood_root: Path, out: Path, per_class: int = 6, seed: int = 0) -> None:
    """A PNG grid: ``per_class`` random segmented cells per class (rows), 150 px each."""
    files, _ = pbc_files(root, excluded_sources(ood_root))
    rng = np.random.default_rng(seed)
    rows = []
    for label in PBC_CLASSES:
        mine = [f for f in files if f.label == label]
        tiles = []
        for i in rng.choice(len(mine), min(per_class, len(mine)), replace=False):
            f = mine[i]
            canvas = segment_pbc_image(decode_rgb(f.path), f"{label}/{f.path.name}")
            tiles.append(np.asarray(Image.fromarray(canvas).resize((150, 150))))
        rows.append(np.concatenate(tiles, axis=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def segment_command(
    root: Path,
    ood_root: Path,
    cache_dir: Path,
    size: int,
    crop_fraction: float,
    sheet: Path | None = None,
) -> str:
    """``python -m training pbc``: build the cache; the comparison with the dev set as text."""
    images = load_pbc(root, ood_root, size, crop_fraction, cache_dir)
    stats, labels, excluded = cached_canvas_stats(cache_dir / f"pbc-{images.manifest_sha256}.npz")
    dev, dev_labels = dev_set_stats(ood_root / "segmented-other-cells")
    if sheet is not None:
        contact_sheet(root, ood_root, sheet)
    return (
        f"{len(images.labels)} PBC cells segmented, {len(excluded)} excluded (sources of the "
        f"shared OOD sets), {len(images.problems)} not segmented\n\n"
        + comparison_table(stats, labels, dev, dev_labels)
    )
