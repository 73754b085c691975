"""Images generated in tests (encoded in memory)."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def cell_like(seed: int = 0, size: int = 450) -> NDArray[np.uint8]:
    """A synthetic 'segmented cell': a textured disc on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    radius = size * rng.uniform(0.15, 0.25)
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    colour = rng.integers(60, 230, size=(size, size, 3), dtype=np.uint8)
    pixels[disc] = colour[disc]
    return pixels


def encode(pixels: NDArray[np.uint8] | Image.Image, fmt: str, **params: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def with_damaged_exif(pixels: NDArray[np.uint8]) -> bytes:
    """A PNG that decodes, carrying an EXIF block whose one tag (ImageDescription, 200 bytes)
    points past the end of the block: Pillow warns "Tag data larger than file"."""
    entry = b"\x0e\x01" + b"\x02\x00" + (200).to_bytes(4, "little") + (0x1000).to_bytes(4, "little")
    exif = b"II*\x00" + (8).to_bytes(4, "little") + b"\x01\x00" + entry + b"\x00" * 4
    return encode(pixels, "PNG", exif=exif)


def exif_with_entries(count: int) -> bytes:
    """An EXIF block whose first directory declares ``count`` entries, each an UNDEFINED
    200-byte value inside the block: once their sizes add up past the block's length,
    Pillow warns "Tag data larger than file. Skipping tag N" for every further entry."""
    entries = b"".join(
        (i + 1).to_bytes(2, "little") + (7).to_bytes(2, "little")
        + (200).to_bytes(4, "little") + (8).to_bytes(4, "little")
        for i in range(count)
    )  # fmt: skip
    return (
        b"II*\x00" + (8).to_bytes(4, "little") + count.to_bytes(2, "little") + entries + b"\0" * 4
    )
