"""Discover C-NMC images, parse subjects and labels, dedupe by content, cache decoded pixels.

Supported layouts (PNG or BMP):
- published C-NMC: ``training_data/fold_<n>/{all,hem}/UID_<subject>_..._{all,hem}.<ext>``;
- the preliminary-test folder: images named ``<n>.bmp`` with a labels CSV
  (``C-NMC_test_prelim_phase_data_labels.csv``: ``Patient_ID,new_names,labels``, 1 = all);
- a plain class-per-folder layout: ``<root>/{all,hem}/*.<ext>``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.imaging import decode_file

LABELS: tuple[str, str] = ("hem", "all")
"""Class order everywhere (model output columns): index 1 is the positive class ``all``."""
POSITIVE_LABEL = "all"
IMAGE_SUFFIXES = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})
PRELIM_LABELS_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
IGNORED_NAMES = frozenset({"manifest.csv", PRELIM_LABELS_CSV, ".DS_Store", "Thumbs.db"})

# UID_11_1_1_all, UID_H10_100_1_hem, the real dataset's lower-case UID_h3_1_1_hem.
_SUBJECT_RE = re.compile(r"^UID_(?P<hem>[Hh]?)(?P<num>\d+)_")


@dataclass(frozen=True)
class CellImage:
    """One image file with its label and subject."""

    path: Path
    label: str
    subject_id: str


@dataclass
class Problem:
    """A file that was not used, and why."""

    path: str
    reason: str


@dataclass
class Dataset:
    """Deduplicated images plus everything that was dropped or rejected on the way."""

    root: Path
    images: list[CellImage]
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    """(dropped path, kept path) pairs with identical decoded pixels."""
    problems: list[Problem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(img.label for img in self.images)
        return {label: c.get(label, 0) for label in LABELS}

    def subjects(self) -> dict[str, str]:
        """subject_id -> label."""
        return {img.subject_id: img.label for img in self.images}


def parse_subject_id(name: str) -> str | None:
    """Subject from a C-NMC file name, normalised: ``UID_h3_1_1_hem.bmp`` -> ``UID_H3``."""
    m = _SUBJECT_RE.match(name)
    if m is None:
        return None
    return f"UID_{'H' if m.group('hem') else ''}{m.group('num')}"


def _label_from_name(name: str) -> str | None:
    stem = Path(name).stem.lower()
    for label in LABELS:
        if stem.endswith("_" + label):
            return label
    return None


def _discover_prelim(folder: Path, problems: list[Problem]) -> list[CellImage]:
    found: list[CellImage] = []
    csv_path = folder / PRELIM_LABELS_CSV
    listed: set[str] = set()
    with csv_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["new_names"].strip()
            listed.add(name)
            path = folder / name
            if not path.is_file():
                problems.append(Problem(str(path), "listed in labels CSV but missing"))
                continue
            label_code = row["labels"].strip()
            if label_code not in {"0", "1"}:
                problems.append(Problem(str(path), f"unexpected label {label_code!r} in CSV"))
                continue
            subject = parse_subject_id(row["Patient_ID"].strip() + "_")
            if subject is None:
                problems.append(Problem(str(path), "unparseable Patient_ID in CSV"))
                continue
            found.append(CellImage(path, LABELS[int(label_code)], subject))
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in listed and path.name not in IGNORED_NAMES:
            problems.append(Problem(str(path), "not listed in labels CSV"))
    return found


def discover(root: Path | str) -> Dataset:
    """Find labelled images under ``root`` (any supported layout), without decoding them."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory")
    images: list[CellImage] = []
    problems: list[Problem] = []
    prelim_dirs = {p.parent for p in root.rglob(PRELIM_LABELS_CSV)}
    for d in sorted(prelim_dirs):
        images.extend(_discover_prelim(d, problems))
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.parent in prelim_dirs or path.name in IGNORED_NAMES:
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(Problem(str(path), "unexpected file type"))
            continue
        folder_label = path.parent.name.lower()
        name_label = _label_from_name(path.name)
        if folder_label not in LABELS:
            problems.append(Problem(str(path), "not inside an 'all' or 'hem' folder"))
            continue
        if name_label is not None and name_label != folder_label:
            problems.append(Problem(str(path), "label in name disagrees with folder"))
            continue
        subject = parse_subject_id(path.name)
        if subject is None:
            # Plain class-per-folder data without subject IDs: each image is its own subject,
            # which is the only honest assumption when nothing links images together.
            subject = f"IMG_{path.stem}"
        is_hem_subject = subject.startswith("UID_H")
        if subject.startswith("UID_") and is_hem_subject != (folder_label == "hem"):
            problems.append(Problem(str(path), "subject ID disagrees with class folder"))
            continue
        images.append(CellImage(path, folder_label, subject))
    return Dataset(root=root, images=images, problems=problems)


def decode_rgb(path: Path) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` RGB array, decoded exactly as the service decodes an upload of
    the same bytes (contract.imaging: alpha on black, 16-bit scaled, EXIF orientation)."""
    return decode_file(path)


def pixel_sha256(pixels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def manifest_sha256(dataset: Dataset) -> str:
    """Hash of (relative path, label, subject) of the kept images: identifies the training data."""
    h = hashlib.sha256()
    for img in sorted(dataset.images, key=lambda i: str(i.path)):
        rel = img.path.relative_to(dataset.root).as_posix()
        h.update(f"{rel},{img.label},{img.subject_id}\n".encode())
    return h.hexdigest()


@dataclass
class CachedImages:
    """Decoded, deduplicated, resized images held in memory as uint8."""

    pixels: np.ndarray  # [N, size, size, 3] uint8
    labels: np.ndarray  # [N] int64, index into LABELS
    subjects: np.ndarray  # [N] str
    paths: list[str]  # relative to the data root
    manifest_sha256: str
    duplicates: list[tuple[str, str]]
    problems: list[Problem]

    def subset(self, mask: np.ndarray) -> CachedImages:
        idx = np.flatnonzero(mask)
        return CachedImages(
            self.pixels[idx],
            self.labels[idx],
            self.subjects[idx],
            [self.paths[i] for i in idx],
            self.manifest_sha256,
            self.duplicates,
            self.problems,
        )


def _listing_key(dataset: Dataset, size: int, crop_fraction: float) -> str:
    h = hashlib.sha256(f"v1|{size}|{crop_fraction:.4f}\n".encode())
    for img in dataset.images:
        st = img.path.stat()
        h.update(
            f"{img.path}|{img.label}|{img.subject_id}|{st.st_size}|{st.st_mtime_ns}\n".encode()
        )
    return h.hexdigest()[:20]


def load_images(
    root: Path | str,
    size: int,
    crop_fraction: float = 1.0,
    cache_dir: Path | str | None = None,
    log: bool = True,
) -> CachedImages:
    """Discover, decode, dedupe and resize every image once; reuse the cache when unchanged."""
    import json
    import time

    from training.preprocess import resize_for_model

    dataset = discover(root)
    key = _listing_key(dataset, size, crop_fraction)
    cache_file = Path(cache_dir) / f"cnmc-{key}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return CachedImages(
                z["pixels"],
                z["labels"],
                z["subjects"],
                list(meta["paths"]),
                meta["manifest_sha256"],
                [tuple(d) for d in meta["duplicates"]],
                [Problem(**p) for p in meta["problems"]],
            )

    kept: list[CellImage] = []
    arrays: list[np.ndarray] = []
    seen: dict[str, str] = {}
    problems = list(dataset.problems)
    duplicates: list[tuple[str, str]] = []
    start = time.monotonic()
    n = len(dataset.images)
    for i, img in enumerate(dataset.images, 1):
        rel = img.path.relative_to(dataset.root).as_posix()
        try:
            pixels = decode_rgb(img.path)
        except Exception as exc:  # unreadable file: report it, never skip silently
            problems.append(Problem(str(img.path), f"unreadable image: {type(exc).__name__}"))
            continue
        digest = pixel_sha256(pixels)
        if digest in seen:
            duplicates.append((rel, seen[digest]))
            continue
        seen[digest] = rel
        kept.append(img)
        arrays.append(resize_for_model(pixels[None], size, crop_fraction).numpy()[0])
        if log and (i % 250 == 0 or i == n):
            rate = i / max(time.monotonic() - start, 1e-9)
            print(
                f"  cache: {i}/{n} images decoded, {rate:.0f} img/s, ETA {(n - i) / rate:.0f} s",
                flush=True,
            )
    kept_ds = Dataset(dataset.root, kept)
    pixels_arr = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8)
    result = CachedImages(
        pixels=pixels_arr,
        labels=np.array([LABELS.index(i.label) for i in kept], dtype=np.int64),
        subjects=np.array([i.subject_id for i in kept], dtype=str),
        paths=[i.path.relative_to(dataset.root).as_posix() for i in kept],
        manifest_sha256=manifest_sha256(kept_ds),
        duplicates=duplicates,
        problems=problems,
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "paths": result.paths,
            "manifest_sha256": result.manifest_sha256,
            "duplicates": duplicates,
            "problems": [{"path": p.path, "reason": p.reason} for p in problems],
        }
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            pixels=result.pixels,
            labels=result.labels,
            subjects=result.subjects,
            meta=np.array(json.dumps(meta)),
        )
        tmp.replace(cache_file)
    return result
