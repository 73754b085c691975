"""Property-based tests of the decoder (app/imaging.py) on generated images (hypothesis)."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage, TruncatedImage, UnsupportedImageMode
from app.imaging import decode_image
from contract.card import InputChecks
from contract.imaging import EXIF_ORIENTATION

MAX_DECODED_SIDE = max(InputChecks().expected_size)  # the service downscales to the card's size

LIMIT = 25_000_000
INPUT_ERRORS = (InvalidImage, TruncatedImage, ImageTooLarge, UnsupportedImageMode)
MODES = ["1", "L", "P", "P+transparency", "RGB", "RGBA", "LA", "I;16", "CMYK"]
FORMATS = ["PNG", "BMP", "TIFF", "JPEG"]
# EXIF orientation -> the transposition that displays the image upright (EXIF 2.3).
UPRIGHT = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}
# Derandomized: the same examples on every run (no flaky CI); no example database on disk.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def generated_images(draw: st.DrawFn) -> tuple[Image.Image, str, str, int]:
    """(image, mode name, format, EXIF orientation): small sizes mostly, some large enough
    to be downscaled; random pixels from a drawn seed."""
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    side = st.integers(1, 48) | st.integers(MAX_DECODED_SIDE - 2, MAX_DECODED_SIDE + 300)
    width, height = draw(side), draw(side)
    orientation = (
        draw(st.sampled_from([1, 1, 2, 3, 4, 5, 6, 7, 8])) if fmt in ("PNG", "JPEG") else 1
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode in ("P", "P+transparency"):
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        image = image.convert("RGB").quantize(colors=16)
        if mode == "P+transparency":
            image.info["transparency"] = 0
    else:
        bands = len(mode) if mode not in ("1", "CMYK") else (1 if mode == "1" else 4)
        array = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
        image = Image.fromarray(
            array[:, :, 0] if bands == 1 else array, "L" if bands == 1 else mode
        )
        if mode == "1":
            image = image.convert("1")
    return image, mode, fmt, orientation


def _encode(image: Image.Image, fmt: str, orientation: int) -> bytes | None:
    params: dict[str, object] = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        params["exif"] = exif
    if "transparency" in image.info:
        params["transparency"] = image.info["transparency"]
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **params)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # Pillow cannot write this mode in this format
    return buffer.getvalue()


def _expected_rgb(image: Image.Image, mode: str) -> NDArray[np.uint8]:
    """The service's documented conversion, computed independently."""
    if mode == "I;16":
        wide = np.asarray(image).astype(np.int64)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "P+transparency"):
        rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
        return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


@PROPERTY
@given(generated_images())
def test_any_accepted_image_decodes_to_rgb_uint8_or_an_input_error(
    case: tuple[Image.Image, str, str, int],
) -> None:
    image, mode, fmt, orientation = case
    data = _encode(image, fmt, orientation)
    assume(data is not None)
    assert data is not None
    try:
        decoded = decode_image(data, LIMIT)
    except INPUT_ERRORS:
        return  # a 4xx with a stable code; anything else would be a 500
    pixels = decoded.pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.flags["C_CONTIGUOUS"]
    upright = image
    for step in UPRIGHT.get(orientation, []):
        upright = upright.transpose(step)
    width, height = upright.size
    if max(width, height) > MAX_DECODED_SIDE:  # downscaled: longer side 450, aspect kept
        scale = 450 / max(width, height)
        expected_size = (max(1, round(height * scale)), max(1, round(width * scale)), 3)
        assert pixels.shape == expected_size
        assert any(w.startswith("downscaled: ") for w in decoded.check.warnings)
        assert decoded.check.out_of_distribution
        return
    assert pixels.shape == (height, width, 3)
    lossless = fmt != "JPEG" and decoded.source_mode == image.mode
    if lossless:
        if mode == "P+transparency" and fmt != "PNG":
            mode = "P"  # Pillow writes palette transparency to PNG only: plain palette here
        expected = _expected_rgb(upright, mode)
        assert np.array_equal(pixels, expected)


@PROPERTY
@given(generated_images(), st.floats(0.0, 1.0))
def test_truncated_images_decode_or_raise_only_input_errors(
    case: tuple[Image.Image, str, str, int], keep: float
) -> None:
    image, _, fmt, orientation = case
    data = _encode(image, fmt, orientation)
    assume(data is not None)
    assert data is not None
    try:
        pixels = decode_image(data[: int(len(data) * keep)], LIMIT).pixels
    except INPUT_ERRORS:
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
