"""Decoding and input checks: bytes -> RGB uint8 pixels, plus the out-of-distribution flag.

Only BMP, PNG, JPEG and TIFF decoders are ever tried. The pixel count is checked from the
header before any pixel is decoded (decompression-bomb guard), EXIF orientation is applied,
and every supported pixel format is converted to 8-bit RGB:

- ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV``: Pillow's conversion to RGB.
- ``RGBA``/``LA``/``PA``/palette with transparency: composited onto **black**, because the
  C-NMC background is black (transparent = background).
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``) and ``I`` holding 16-bit data: scaled to 8 bits
  as ``round(v * 255 / 65535)``; Pillow's own ``convert`` would clip instead of scaling.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, TruncatedImage, UnsupportedImageMode
from app.logging import collect_warnings

ALLOWED_FORMATS = ("BMP", "PNG", "JPEG", "TIFF")
EXPECTED_SIZE = (450, 450)
EXIF_ORIENTATION = 0x0112

# Out-of-distribution rule, calibrated on /work/shared/data (scripts/calibrate_ood.py):
# all 2,662 C-NMC images have >= 96.1 % near-black border and 6.8-25 % foreground; all 80
# OOD images (smear fields, unsegmented lymphocytes) have <= 0.6 % near-black border.
DARK_LEVEL = 10  # a pixel is "background" when all its channels are <= this value
BORDER_WIDTH = 0.10  # outer band, as a fraction of the shorter side
MIN_BORDER_DARK = 0.50
MIN_FOREGROUND = 0.02
MAX_FOREGROUND = 0.50
SAMPLE_SIDE = 100  # features are computed on a strided ~100x100 sample: ~0.2 ms


@dataclass(frozen=True)
class InputCheck:
    """What the input checks found about one image."""

    out_of_distribution: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    border_dark_fraction: float = 0.0
    foreground_fraction: float = 0.0


@dataclass(frozen=True)
class DecodedImage:
    pixels: NDArray[np.uint8]  # [H, W, 3] RGB, C-contiguous
    source_format: str
    source_mode: str
    check: InputCheck


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode and check one image; raises a ``ServiceError`` subclass for unusable input.

    A file that decodes although the decoder warned about it (damaged metadata, tags that
    point past the end of the file) gets a ``damaged_file: <decoder's words>`` warning
    (collected through the warnings hook the service installs at start-up, app.logging).
    """
    if not data:
        raise InvalidImage("An uploaded image is empty.")
    with collect_warnings() as decoder_notes:
        pixels, source_format, source_mode = _decode(data, max_pixels)
    check = check_input(pixels)
    check.warnings[:0] = [f"damaged_file: {note}" for note in dict.fromkeys(decoder_notes)]
    return DecodedImage(pixels, source_format, source_mode, check)


def _decode(data: bytes, max_pixels: int) -> tuple[NDArray[np.uint8], str, str]:
    """Pixels, source format and source pixel mode."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise InvalidImage() from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge() from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage() from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image has {width}x{height} pixels; the limit is {max_pixels} pixels."
        )
    if width == 0 or height == 0:
        raise InvalidImage("The image has no pixels.")
    source_format, source_mode = str(image.format), image.mode
    try:
        image.load()
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose always copies
            image = ImageOps.exif_transpose(image)
        pixels = _to_rgb(image)
    except UnsupportedImageMode:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a short read as OSError("image file is truncated ...").
        raise TruncatedImage() from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - checked above
        raise ImageTooLarge() from exc
    return pixels, source_format, source_mode


def _to_rgb(image: Image.Image) -> NDArray[np.uint8]:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = _sixteen_to_eight(np.asarray(image))
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_black(np.asarray(image.convert("RGBA")))
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise UnsupportedImageMode(f"Pixel format {mode!r} is not supported.")


def _sixteen_to_eight(values: NDArray[np.generic]) -> NDArray[np.uint8]:
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _composite_on_black(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return np.ascontiguousarray(rgb.astype(np.uint8))


def check_input(pixels: NDArray[np.uint8]) -> InputCheck:
    """Does this look like a C-NMC segmented single cell (a cell on a black background)?

    Two cheap features on a strided sample: the fraction of near-black pixels in the outer
    10 % band (C-NMC: the background, so ~1) and the fraction of non-black pixels overall (the
    cell: a few to a few tens of percent). Whole smear fields and unsegmented cells have no
    black background and are flagged. A flag means "outside what the model was trained on":
    the probabilities are still returned but should not be trusted.
    """
    height, width = pixels.shape[:2]
    stride = max(1, min(height, width) // SAMPLE_SIDE)
    sample = pixels[::stride, ::stride]
    # Channel-wise maximum: ~20x faster than .max(axis=2) on a strided view.
    brightest = np.maximum(np.maximum(sample[..., 0], sample[..., 1]), sample[..., 2])
    dark = brightest <= DARK_LEVEL
    rows, cols = dark.shape
    band = max(1, round(min(rows, cols) * BORDER_WIDTH))
    interior = dark[band:-band, band:-band] if rows > 2 * band and cols > 2 * band else dark[:0, :0]
    border_dark = (int(dark.sum()) - int(interior.sum())) / max(1, dark.size - interior.size)
    foreground = 1.0 - float(dark.mean())

    reasons: list[str] = []
    if border_dark < MIN_BORDER_DARK:
        reasons.append("no_black_background")
    if foreground < MIN_FOREGROUND:
        reasons.append("no_cell_visible")
    elif foreground > MAX_FOREGROUND:
        reasons.append("foreground_too_large")
    notes: list[str] = []
    if (width, height) != EXPECTED_SIZE:
        notes.append(f"unexpected_size: {width}x{height}, C-NMC images are 450x450")
    return InputCheck(
        out_of_distribution=bool(reasons),
        reasons=reasons,
        warnings=notes,
        border_dark_fraction=round(border_dark, 4),
        foreground_fraction=round(foreground, 4),
    )
