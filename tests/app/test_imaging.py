"""Decoding, pixel-format conversion and the out-of-distribution check (app/imaging.py)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage, TruncatedImage, UnsupportedImageMode
from app.imaging import check_input, decode_image
from tests.app.conftest import CNMC_BMP, CNMC_PNGS, OOD_JPEGS
from tests.app.images import cell_like, encode, with_damaged_exif

LIMIT = 25_000_000


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_decode_to_identical_rgb(fmt: str) -> None:
    pixels = cell_like(1)
    decoded = decode_image(encode(pixels, fmt), LIMIT)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (450, 450, 3)
    assert np.array_equal(decoded.pixels, pixels)
    assert decoded.source_format == fmt


def test_jpeg_decodes() -> None:
    decoded = decode_image(encode(cell_like(2), "JPEG", quality=95), LIMIT)
    assert decoded.pixels.shape == (450, 450, 3)
    assert decoded.source_format == "JPEG"


def test_real_bmp_equals_its_png() -> None:
    png = next(p for p in CNMC_PNGS if p.name == CNMC_BMP.with_suffix(".png").name)
    from_bmp = decode_image(CNMC_BMP.read_bytes(), LIMIT).pixels
    from_png = decode_image(png.read_bytes(), LIMIT).pixels
    assert np.array_equal(from_bmp, from_png)


def test_grayscale_becomes_three_equal_channels() -> None:
    grey = cell_like(3)[:, :, 0]
    decoded = decode_image(encode(Image.fromarray(grey, "L"), "PNG"), LIMIT).pixels
    assert np.array_equal(decoded[:, :, 0], grey)
    assert np.array_equal(decoded[:, :, 1], grey)
    assert np.array_equal(decoded[:, :, 2], grey)


def test_palette_image_uses_its_palette() -> None:
    pixels = cell_like(4)
    palette_image = Image.fromarray(pixels).quantize(colors=64)
    expected = np.asarray(palette_image.convert("RGB"))
    decoded = decode_image(encode(palette_image, "PNG"), LIMIT)
    assert decoded.source_mode == "P"
    assert np.array_equal(decoded.pixels, expected)


def test_rgba_is_composited_on_black() -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :5, 3] = 255  # left half opaque
    rgba[:, 5:, 3] = 0  # right half transparent: background, i.e. black
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT).pixels
    assert (decoded[:, :5] == 200).all()
    assert (decoded[:, 5:] == 0).all()


def test_half_transparent_pixel_is_scaled() -> None:
    rgba = np.full((4, 4, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 128
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT).pixels
    assert (decoded == round(200 * 128 / 255)).all()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grey_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    decoded = decode_image(encode(image, fmt), LIMIT).pixels
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (decoded[..., 0] == decoded[..., 2]).all()


def test_cmyk_jpeg_is_converted() -> None:
    image = Image.fromarray(cell_like(5)).convert("CMYK")
    decoded = decode_image(encode(image, "JPEG", quality=95), LIMIT)
    assert decoded.source_mode == "CMYK"
    assert decoded.pixels.shape == (450, 450, 3)
    assert abs(float(decoded.pixels.mean()) - float(cell_like(5).mean())) < 5


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # white left half, wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=100)
    decoded = decode_image(data, LIMIT).pixels
    assert decoded.shape == (40, 20, 3)  # now tall
    assert decoded[:15].mean() > 200  # white half is on top after the rotation
    assert decoded[25:].mean() < 50


@pytest.mark.parametrize(
    "payload", [b"hello, not an image", b"\x00" * 100, b"GIF89a" + b"\x00" * 50]
)
def test_non_images_are_rejected(payload: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(payload, LIMIT)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_other_formats_are_rejected(fmt: str) -> None:
    with pytest.raises(InvalidImage):
        decode_image(encode(cell_like(6, size=64), fmt), LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_truncated_images_are_detected(fmt: str) -> None:
    data = encode(cell_like(7), fmt)
    with pytest.raises((TruncatedImage, InvalidImage)):
        decode_image(data[: len(data) // 2], LIMIT)


def _mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Corrupted copies of one file: flipped bytes (mostly in the header), cuts, overwritten
    and inserted runs, the damage a broken upload or a bad disk does."""
    out = []
    for _ in range(count):
        d = bytearray(data)
        op = rng.random()
        if op < 0.4:
            for _ in range(rng.randint(1, 8)):
                span = min(len(d), 200) if rng.random() < 0.7 else len(d)
                d[rng.randrange(span)] = rng.randrange(256)
        elif op < 0.6:
            d = d[: rng.randrange(1, len(d))]
        elif op < 0.8:
            at = rng.randrange(min(len(d), 100))
            d[at : at + 4] = rng.randbytes(4)
        else:
            at = rng.randrange(len(d))
            d[at:at] = rng.randbytes(rng.randint(1, 64))
        out.append(bytes(d))
    return out


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("JPEG", {"quality": 90}), ("BMP", {}), ("TIFF", {}),
     ("TIFF", {"compression": "tiff_lzw"})],
)  # fmt: skip
def test_corrupted_files_raise_only_the_services_input_errors(
    fmt: str, options: dict[str, object]
) -> None:
    # Any other exception would surface as a 500 instead of a 4xx with a stable code.
    source = Image.open(CNMC_BMP).convert("RGB").resize((96, 96))
    if fmt == "PNG":  # with an EXIF orientation, so the rotation path meets damage too
        options = {"exif": Image.Exif()}
        options["exif"][0x0112] = 6  # type: ignore[index]
    buffer = io.BytesIO()
    source.save(buffer, fmt, **options)
    rejected = decoded = 0
    for data in _mutations(buffer.getvalue(), random.Random(fmt + str(options)), 300):
        try:
            pixels = decode_image(data, LIMIT).pixels
        except (InvalidImage, TruncatedImage, ImageTooLarge, UnsupportedImageMode):
            rejected += 1
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
            decoded += 1
    assert rejected > 0 and rejected + decoded == 300


def test_damaged_but_decodable_file_is_decoded_with_a_warning() -> None:
    pixels = cell_like(9)
    clean = decode_image(encode(pixels, "PNG"), LIMIT)
    assert clean.check.warnings == []
    for _ in range(2):  # every time, not only the first (Python's default for a warning text)
        damaged = decode_image(with_damaged_exif(pixels), LIMIT)
        assert np.array_equal(damaged.pixels, pixels)
        assert damaged.check.warnings == [
            "damaged_file: Tag data larger than file. Skipping tag 270"
        ]


def test_decoder_warnings_stay_with_their_own_image_across_threads() -> None:
    # Decoding runs in several threads: a warning raised while decoding one image must never
    # land on an image another thread is decoding at the same time.
    from concurrent.futures import ThreadPoolExecutor

    pixels = cell_like(10, size=200)
    files = [with_damaged_exif(pixels) if i % 2 else encode(pixels, "PNG") for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda data: decode_image(data, LIMIT).check.warnings, files))
    damaged = [w for w in results if w and w[0].startswith("damaged_file: ")]
    assert len(damaged) == 200 and all(len(w) == 2 for w in damaged)  # + unexpected_size
    assert all(results[i] == results[0] and len(results[i]) == 1 for i in range(0, 400, 2))


def test_truncated_png_is_reported_as_truncated() -> None:
    data = encode(cell_like(8), "PNG")
    with pytest.raises(TruncatedImage):
        decode_image(data[: len(data) // 2], LIMIT)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 1-bit 12000x12000 PNG: ~20 KB on disk, 144 megapixels once decoded.
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge):
        decode_image(bomb, LIMIT)


def test_pixel_limit_is_configurable() -> None:
    data = encode(cell_like(9, size=100), "PNG")
    assert decode_image(data, 10_000).pixels.shape == (100, 100, 3)
    with pytest.raises(ImageTooLarge):
        decode_image(data, 9_999)


def test_real_cnmc_images_are_in_distribution() -> None:
    for path in [*CNMC_PNGS, CNMC_BMP]:
        check = decode_image(path.read_bytes(), LIMIT).check
        assert not check.out_of_distribution, (path.name, check)
        assert check.warnings == []


def test_ood_images_are_flagged() -> None:
    assert OOD_JPEGS
    for path in OOD_JPEGS:
        check = decode_image(path.read_bytes(), LIMIT).check
        assert check.out_of_distribution, (path.name, check)
        assert "no_black_background" in check.reasons


def test_black_and_full_frames_are_flagged() -> None:
    black = check_input(np.zeros((450, 450, 3), dtype=np.uint8))
    assert black.reasons == ["no_cell_visible"]
    # A bright object filling the centre, black border: too much foreground for one cell.
    big = np.zeros((450, 450, 3), dtype=np.uint8)
    big[50:400, 50:400] = 180
    assert check_input(big).reasons == ["foreground_too_large"]


def test_unexpected_size_is_a_warning_not_a_flag() -> None:
    check = check_input(cell_like(10, size=300))
    assert not check.out_of_distribution
    assert check.warnings and check.warnings[0].startswith("unexpected_size")


def test_decoded_pixels_are_contiguous_uint8() -> None:
    buffer = io.BytesIO(encode(cell_like(11), "PNG"))
    decoded = decode_image(buffer.getvalue(), LIMIT).pixels
    assert decoded.flags["C_CONTIGUOUS"]
