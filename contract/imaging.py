"""The one image decoder: bytes -> 8-bit RGB pixels, for serving, training and the benchmark.

Only BMP, PNG, JPEG and TIFF decoders are ever tried. Decoding is two steps so that callers
can budget memory between them: ``open_image`` reads the header only (the pixel count is
checked there, before any pixel is decoded: decompression-bomb guard), ``decode_opened``
decodes. With ``max_side`` set, an image with a longer side is downscaled to that side right
after decoding (JPEG: inside the decoder, via ``draft``), so nothing larger reaches a model.
EXIF orientation is applied (read with bounded work: an EXIF block or TIFF directory with
more than ``MAX_IFD_ENTRIES`` entries is not parsed), and every supported pixel format is
converted to 8-bit RGB:

- ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV``: Pillow's conversion to RGB.
- ``RGBA``/``LA``/``PA``/palette with transparency: composited onto **black**, because the
  C-NMC background is black (transparent = background).
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``) and ``I`` holding 16-bit data: scaled to 8 bits
  as ``round(v * 255 / 65535)``; Pillow's own ``convert`` would clip instead of scaling.

Damage that still decodes (tags pointing past the end of the file, broken EXIF entries) is
reported by Pillow as Python warnings. The decoder collects those raised while *it* runs, in
*this* thread, with its own capture (``collect_warnings``: a context variable read by a
``warnings.showwarning`` wrapper that forwards every warning to the handler it wraps), and
returns them as notes: at most ``MAX_NOTES`` distinct texts, then a count. Unusable input
raises an ``ImageError`` subclass carrying a stable ``code``.

Imports no TensorFlow: training, the service, the tests and the benchmark all decode here.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, TextIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("BMP", "PNG", "JPEG", "TIFF")
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
MAX_NOTES = 5
WARNING_TEXT_LIMIT = 200


# --- errors ------------------------------------------------------------------------------
class ImageError(Exception):
    """Unusable input; ``code`` is stable (the service answers it as its error code)."""

    code: ClassVar[str] = "invalid_image"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail
        super().__init__(detail or self.code)


class InvalidImageError(ImageError):
    code = "invalid_image"


class TruncatedImageError(ImageError):
    code = "truncated_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class UnsupportedModeError(ImageError):
    code = "unsupported_image_mode"


# --- the decoder's own warning capture ----------------------------------------------------
@dataclass
class WarningNotes:
    """Distinct warning texts raised in a block, at most ``MAX_NOTES``; ``more`` counts the
    occurrences of texts that did not fit."""

    texts: list[str] = field(default_factory=list)
    more: int = 0

    def add(self, text: str) -> bool:
        """Keep ``text``; True when it is new and listed."""
        if text in self.texts:
            return False
        if len(self.texts) >= MAX_NOTES:
            self.more += 1
            return False
        self.texts.append(text)
        return True

    def after(self, earlier: WarningNotes) -> WarningNotes:
        """``earlier``'s notes followed by these, under the same cap."""
        combined = WarningNotes(more=earlier.more + self.more)
        for text in [*earlier.texts, *self.texts]:
            combined.add(text)
        return combined


_collecting: ContextVar[WarningNotes | None] = ContextVar("decoder_warnings", default=None)
_install_lock = threading.Lock()
_PIL_MODULES = r"PIL(\.|$)"


class _Capture:
    """A ``warnings.showwarning`` that notes what the decoder raises. Inside a decode, a
    warning is forwarded to the wrapped handler (a log) only when it is a new note: one
    damaged file can raise tens of thousands (one per broken EXIF entry), counted in the
    notes instead. Outside a decode, everything is forwarded."""

    def __init__(self, forward: Callable[..., None]) -> None:
        self.forward = forward

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        notes = _collecting.get()
        if notes is None or notes.add(str(message)[:WARNING_TEXT_LIMIT]):
            self.forward(message, category, filename, lineno, file, line)


def _ensure_capture() -> None:
    """Wrap whatever ``warnings.showwarning`` is now (a logging hook installed later, a test
    runner's) so the decoder sees its warnings whoever set the handler, and keep Pillow's
    warnings from being shown once only (Python's default shows a text once per location;
    each damaged file must report its own damage). Cheap when already in place."""
    if isinstance(warnings.showwarning, _Capture) and _has_pil_filter():
        return
    with _install_lock:
        if not isinstance(warnings.showwarning, _Capture):
            warnings.showwarning = _Capture(warnings.showwarning)
        if not _has_pil_filter():
            warnings.filterwarnings("always", module=_PIL_MODULES)


def _has_pil_filter() -> bool:
    return any(
        f[0] == "always" and f[3] is not None and f[3].pattern == _PIL_MODULES
        for f in warnings.filters
    )


@contextmanager
def collect_warnings() -> Iterator[WarningNotes]:
    """The distinct Python warnings raised in this thread inside the block."""
    _ensure_capture()
    notes = WarningNotes()
    token = _collecting.set(notes)
    try:
        yield notes
    finally:
        _collecting.reset(token)


# --- decoding ----------------------------------------------------------------------------
@dataclass
class OpenedImage:
    """An image whose header was read (Pillow is lazy: no pixel decoded yet)."""

    image: Image.Image
    source_format: str
    source_mode: str
    source_size: tuple[int, int]  # (width, height) declared by the header
    notes: WarningNotes  # decoder warnings raised while reading the header
    max_side: int | None = None

    @property
    def declared_pixels(self) -> int:
        return self.source_size[0] * self.source_size[1]

    @property
    def decoded_size(self) -> tuple[int, int]:
        """Size of the pixels kept (after the early downscale)."""
        return _downscaled_size(self.image.size, self.max_side)

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
        """Bytes of the RGB pixels kept."""
        kept_width, kept_height = self.decoded_size
        return 3 * kept_width * kept_height


@dataclass(frozen=True)
class DecodedPixels:
    pixels: NDArray[np.uint8]  # [H, W, 3] RGB, C-contiguous
    source_format: str
    source_mode: str
    source_size: tuple[int, int]
    notes: list[str]  # damaged_file: ... and downscaled: ... notes, in that order


def open_image(data: bytes, max_pixels: int, max_side: int | None = None) -> OpenedImage:
    """Read the header only: format, mode and size; refuses more than ``max_pixels``."""
    if not data:
        raise InvalidImageError("An uploaded image is empty.")
    _refuse_absurd_tiff_directory(data)
    with collect_warnings() as notes:
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as exc:
            raise InvalidImageError() from exc
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError() from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImageError() from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image has {width}x{height} pixels; the limit is {max_pixels} pixels."
        )
    if width == 0 or height == 0:
        raise InvalidImageError("The image has no pixels.")
    if image.format == "JPEG" and max_side is not None and max(width, height) > max_side:
        # The JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding: the full-size pixels
        # never exist in memory. draft keeps at least the requested size.
        image.draft(None, _downscaled_size(image.size, max_side))
    return OpenedImage(image, str(image.format), image.mode, (width, height), notes, max_side)


def decode_opened(opened: OpenedImage) -> DecodedPixels:
    """Pixels of an opened image, downscaled when over ``max_side``, with its notes."""
    with collect_warnings() as notes:
        pixels = _decode(opened.image, notes, opened.max_side)
    notes = notes.after(opened.notes)
    damage = [f"damaged_file: {text}" for text in notes.texts]
    if notes.more:
        damage.append(f"damaged_file: {notes.more} more decoder warnings not listed")
    width, height = opened.source_size
    if max(pixels.shape[:2]) < max(width, height):  # JPEG draft or _downscale
        damage.append(
            f"downscaled: {width}x{height} was reduced to {pixels.shape[1]}x{pixels.shape[0]} "
            f"before inference (images with a side over {opened.max_side} pixels are)"
        )
    return DecodedPixels(pixels, opened.source_format, opened.source_mode, (width, height), damage)


def decode_image(data: bytes, max_pixels: int, max_side: int | None = None) -> DecodedPixels:
    return decode_opened(open_image(data, max_pixels, max_side))


def decode_file(path: Path | str, max_pixels: int = 10**9) -> NDArray[np.uint8]:
    """RGB pixels of an image file, as the service decodes an upload of its bytes."""
    return decode_image(Path(path).read_bytes(), max_pixels).pixels


def _decode(image: Image.Image, notes: WarningNotes, max_side: int | None) -> NDArray[np.uint8]:
    """RGB pixels, orientation applied, reduced when large."""
    try:
        image.load()
        orientation = _exif_orientation(image, notes)
        if _downscaled_size(image.size, max_side) != image.size:
            image = _downscale(image, max_side)
        if orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[orientation])
        pixels = _to_rgb(image)
    except UnsupportedModeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a short read as OSError("image file is truncated ...").
        raise TruncatedImageError() from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - checked at open
        raise ImageTooLargeError() from exc
    return pixels


def _downscaled_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` when no side is over ``max_side`` (or it is None), else scaled to a longer
    side of ``max_side`` (aspect ratio kept)."""
    if max_side is None or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _downscale(image: Image.Image, max_side: int | None) -> Image.Image:
    """Bilinear (after a box reduce to twice the target: cheap on huge images); modes whose
    values are not intensities (palette indices, 1-bit) or that Pillow only resizes by
    sampling (16-bit) are sampled."""
    size = _downscaled_size(image.size, max_side)
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
        raise InvalidImageError(
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
    raise UnsupportedModeError(f"Pixel format {mode!r} is not supported.")


def _sixteen_to_eight(values: NDArray[np.generic]) -> NDArray[np.uint8]:
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _composite_on_black(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return np.ascontiguousarray(rgb.astype(np.uint8))
