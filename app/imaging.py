"""Decoding and input checks: bytes -> RGB uint8 pixels, plus the out-of-distribution flag.

Only BMP, PNG, JPEG and TIFF decoders are ever tried. Decoding is two steps so that callers
can budget memory between them: ``open_image`` reads the header only (the pixel count is
checked there, before any pixel is decoded: decompression-bomb guard), ``decode_opened``
decodes. Images with a side over ``MAX_DECODED_SIDE`` are downscaled to a longer side of 450
right after decoding (JPEG: inside the decoder, via ``draft``), EXIF orientation is applied (read
with bounded work: an EXIF block or TIFF directory with more than ``MAX_IFD_ENTRIES``
entries is not parsed), and every supported pixel format is converted to 8-bit RGB:

- ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV``: Pillow's conversion to RGB.
- ``RGBA``/``LA``/``PA``/palette with transparency: composited onto **black**, because the
  C-NMC background is black (transparent = background).
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``) and ``I`` holding 16-bit data: scaled to 8 bits
  as ``round(v * 255 / 65535)``; Pillow's own ``convert`` would clip instead of scaling.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, TruncatedImage, UnsupportedImageMode
from app.logging import WarningNotes, collect_warnings

ALLOWED_FORMATS = ("BMP", "PNG", "JPEG", "TIFF")
EXPECTED_SIDE = 450  # C-NMC cells: 450x450, the cell segmented on a black background
# Geometry the model can judge: exactly 450x450. It was trained without zoom (cell size is a
# real feature, training/train.py) and resizes its input to 450x450 itself, so any other
# size shows the cell at a scale it never saw: a real cell cropped to 428 or padded to 472
# (+-5 % scale) flipped 2-3 of 60 labels, padded to 900 45 of 60 (app/README.md). There is
# no telling from the pixels how large the cell should be, so such images are flagged, not
# normalised.
# Images with a side over EXPECTED_SIDE (flagged anyway) are downscaled right after decoding
# (JPEG: inside the decoder) so that their longer side is EXPECTED_SIDE: nothing larger
# than a C-NMC image reaches the batcher or the model. The model would resize them to
# 450x450 itself, so this changes their result little; it bounds the memory they take.
MAX_DECODED_SIDE = EXPECTED_SIDE
_AVERAGEABLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I"})
EXIF_ORIENTATION = 0x0112
# ImageOps.exif_transpose's mapping; applied after the downscale, on the small image.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
MAX_IFD_ENTRIES = 512  # real EXIF/TIFF first directories hold tens of entries

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
    point past the end of the file) gets ``damaged_file: <decoder's words>`` warnings
    (collected through the warnings hook the service installs at start-up, app.logging; at
    most ``app.logging.MAX_NOTES`` distinct ones, then one saying how many more there were).
    """
    return decode_opened(open_image(data, max_pixels))


@dataclass
class OpenedImage:
    """An image whose header was read (Pillow is lazy: no pixel decoded yet)."""

    image: Image.Image
    source_format: str
    source_mode: str
    source_size: tuple[int, int]  # (width, height) declared by the header
    notes: WarningNotes  # decoder warnings raised while reading the header

    @property
    def declared_pixels(self) -> int:
        return self.source_size[0] * self.source_size[1]

    @property
    def decoded_size(self) -> tuple[int, int]:
        """Size of the pixels kept for inference (after the early downscale)."""
        return _downscaled_size(self.image.size)

    @property
    def decode_bytes(self) -> int:
        """Upper estimate of the memory decoding takes at its peak: Pillow's buffer at up to
        4 bytes a pixel, plus the conversions to RGB (up to 12 bytes a kept pixel: the
        uint16 copies of alpha compositing)."""
        width, height = self.image.size  # after the JPEG draft, which scales in the decoder
        kept_width, kept_height = self.decoded_size
        return 4 * width * height + 12 * kept_width * kept_height

    @property
    def kept_bytes(self) -> int:
        """Bytes of the RGB pixels kept until the request is answered."""
        kept_width, kept_height = self.decoded_size
        return 3 * kept_width * kept_height


def open_image(data: bytes, max_pixels: int) -> OpenedImage:
    """Read the header only: format, mode and size; refuses more than ``max_pixels``."""
    if not data:
        raise InvalidImage("An uploaded image is empty.")
    _refuse_absurd_tiff_directory(data)
    with collect_warnings() as notes:
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
    if image.format == "JPEG" and max(width, height) > MAX_DECODED_SIDE:
        # The JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding: the full-size pixels
        # never exist in memory. draft keeps at least the requested size.
        image.draft(None, _downscaled_size(image.size))
    return OpenedImage(image, str(image.format), image.mode, (width, height), notes)


def decode_opened(opened: OpenedImage) -> DecodedImage:
    """Pixels of an opened image, downscaled when large, then the input checks."""
    with collect_warnings() as notes:
        pixels = _decode(opened.image, notes)
    notes = notes.after(opened.notes)
    check = check_input(pixels, opened.source_size)
    damage = [f"damaged_file: {text}" for text in notes.texts]
    if notes.more:
        damage.append(f"damaged_file: {notes.more} more decoder warnings not listed")
    width, height = opened.source_size
    if max(pixels.shape[:2]) < max(width, height):  # JPEG draft or _downscale
        damage.append(
            f"downscaled: {width}x{height} was reduced to {pixels.shape[1]}x{pixels.shape[0]} "
            f"before inference (images with a side over {MAX_DECODED_SIDE} pixels are)"
        )
    check.warnings[:0] = damage
    return DecodedImage(pixels, opened.source_format, opened.source_mode, check)


def _decode(image: Image.Image, notes: WarningNotes) -> NDArray[np.uint8]:
    """RGB pixels, orientation applied, reduced when large."""
    try:
        image.load()
        orientation = _exif_orientation(image, notes)
        if _downscaled_size(image.size) != image.size:
            image = _downscale(image)
        if orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[orientation])
        pixels = _to_rgb(image)
    except UnsupportedImageMode:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a short read as OSError("image file is truncated ...").
        raise TruncatedImage() from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - checked at open
        raise ImageTooLarge() from exc
    return pixels


def _downscaled_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` when no side is over MAX_DECODED_SIDE, else scaled to a longer side of
    EXPECTED_SIDE (aspect ratio kept)."""
    if max(size) <= MAX_DECODED_SIDE:
        return size
    scale = EXPECTED_SIDE / max(size)
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _downscale(image: Image.Image) -> Image.Image:
    """Bilinear (after a box reduce to twice the target: cheap on huge images); modes whose
    values are not intensities (palette indices, 1-bit) or that Pillow only resizes by
    sampling (16-bit) are sampled."""
    size = _downscaled_size(image.size)
    if image.mode in _AVERAGEABLE_MODES:
        return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image.resize(size, Image.Resampling.NEAREST)


def _exif_orientation(image: Image.Image, notes: WarningNotes) -> int:
    """The EXIF orientation tag (1: as stored). An EXIF block declaring more than
    ``MAX_IFD_ENTRIES`` entries is damaged: it is not parsed (parsing it costs a Python
    warning per broken entry), and a warning says so."""
    raw = image.info.get("exif")
    profile = image.info.get("Raw profile type exif")  # PNG text chunk, read by getexif too
    if raw is None and isinstance(profile, str):
        try:  # Pillow's own reading of it: hex digits after three header lines
            raw = bytes.fromhex("".join(profile.split("\n")[3:]))
        except ValueError:
            raw = None
    if isinstance(raw, bytes):
        count = _ifd0_entry_count(raw.removeprefix(b"Exif\x00\x00"))
        if count is not None and count > MAX_IFD_ENTRIES:
            notes.add(
                f"EXIF block declares {count} entries (at most {MAX_IFD_ENTRIES} are read); "
                "EXIF ignored, orientation not applied"
            )
            return 1
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _ifd0_entry_count(block: bytes) -> int | None:
    """Entry count of the first directory of a TIFF-structured block (a TIFF file or an
    EXIF block); None when the block is not one."""
    if len(block) < 8 or block[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order: Literal["little", "big"] = "little" if block[:2] == b"II" else "big"
    offset = int.from_bytes(block[4:8], order)
    if offset + 2 > len(block):
        return None
    return int.from_bytes(block[offset : offset + 2], order)


def _refuse_absurd_tiff_directory(data: bytes) -> None:
    """Pillow parses a TIFF's first directory when it opens the file, one Python warning per
    broken entry: refuse a directory no real image has before that work starts."""
    count = _ifd0_entry_count(data)
    if count is not None and count > MAX_IFD_ENTRIES:
        raise InvalidImage(
            f"The TIFF directory declares {count} entries; at most {MAX_IFD_ENTRIES} are read."
        )


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


def check_input(
    pixels: NDArray[np.uint8], source_size: tuple[int, int] | None = None
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
    reasons, notes = _geometry(source_size or (width, height))
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

    if border_dark < MIN_BORDER_DARK:
        reasons.append("no_black_background")
    if foreground < MIN_FOREGROUND:
        reasons.append("no_cell_visible")
    elif foreground > MAX_FOREGROUND:
        reasons.append("foreground_too_large")
    return InputCheck(
        out_of_distribution=bool(reasons),
        reasons=reasons,
        warnings=notes,
        border_dark_fraction=round(border_dark, 4),
        foreground_fraction=round(foreground, 4),
    )


def _geometry(size: tuple[int, int]) -> tuple[list[str], list[str]]:
    """Reason codes and the warning explaining them, for an image of ``size`` (w, h)."""
    if size == (EXPECTED_SIDE, EXPECTED_SIDE):
        return [], []
    reason = "too_small" if min(size) < EXPECTED_SIDE else "unexpected_size"
    width, height = size
    return [reason], [
        f"{reason}: {width}x{height}; the model was trained on {EXPECTED_SIDE}x{EXPECTED_SIDE} "
        "cells only"
    ]
