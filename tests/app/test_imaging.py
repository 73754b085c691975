"""Decoding, pixel-format conversion and the out-of-distribution check (app/imaging.py)."""

from __future__ import annotations

import io
import logging
import random
import re
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage, TruncatedImage, UnsupportedImageMode
from app.imaging import decode_image
from app.input_checks import check_input
from contract.imaging import MAX_NOTES
from tests.app.conftest import CNMC_BMP, CNMC_PNGS, OOD_JPEGS
from tests.app.images import cell_like, encode, exif_with_entries, with_damaged_exif

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


@pytest.mark.parametrize(
    ("size", "reason"),
    [((8, 8), "too_small"), ((32, 32), "too_small"), ((450, 1), "too_small"),
     ((300, 300), "too_small"), ((449, 450), "too_small"), ((460, 440), "too_small"),
     ((900, 900), "unexpected_size"), ((451, 451), "unexpected_size"),
     ((450, 451), "unexpected_size")],
)  # fmt: skip
def test_sizes_the_model_was_not_trained_on_are_flagged(size: tuple[int, int], reason: str) -> None:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    cell = cell_like(10, size=min(size))
    pixels[: cell.shape[0], : cell.shape[1]] = cell  # a cell that passes the content checks
    check = decode_image(encode(pixels, "PNG"), LIMIT).check
    assert check.out_of_distribution
    assert check.reasons[0] == reason
    assert any(w.startswith(f"{reason}: {width}x{height}") for w in check.warnings)


def test_real_cell_on_a_large_black_canvas_is_flagged() -> None:
    # The review's case: a genuine C-NMC cell padded to 900x900 changes label once the model
    # resizes it (the cell is half as big); its content alone still looks like a C-NMC cell.
    cell = np.asarray(Image.open(CNMC_BMP).convert("RGB"))
    canvas = np.zeros((900, 900, 3), dtype=np.uint8)
    canvas[225:675, 225:675] = cell
    check = decode_image(encode(canvas, "PNG"), LIMIT).check
    assert check.out_of_distribution
    assert check.reasons == ["unexpected_size"]


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"),
                                           ("PNG", "I;16"), ("TIFF", "RGBA")])  # fmt: skip
def test_large_images_are_downscaled_before_inference_and_flagged(fmt: str, mode: str) -> None:
    pixels = np.zeros((2400, 3000, 3), dtype=np.uint8)
    pixels[1000:1400, 1300:1700] = 200
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.quantize(colors=4)
    elif mode == "I;16":
        image = Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)
    elif mode == "RGBA":
        image = image.convert("RGBA")
    decoded = decode_image(encode(image, fmt), LIMIT)
    assert decoded.pixels.shape == (360, 450, 3)  # 3000x2400 scaled to a longer side of 450
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags["C_CONTIGUOUS"]
    assert abs(int(decoded.pixels[180, 225, 0]) - 200) <= 3  # the bright square survives
    assert decoded.pixels[:100, :100].max() <= 3
    assert decoded.check.out_of_distribution
    assert decoded.check.reasons[0] == "unexpected_size"
    assert any(w.startswith("downscaled: 3000x2400 was reduced to 450x360") for w in
               decoded.check.warnings)  # fmt: skip


def test_exif_orientation_is_applied_after_the_downscale() -> None:
    pixels = np.zeros((1000, 2000, 3), dtype=np.uint8)
    pixels[:, :1000] = 255  # white left half, wide image
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG", exif=exif), LIMIT).pixels
    assert decoded.shape == (450, 225, 3)  # scaled to 450x225, then rotated: tall
    assert decoded[:200].mean() > 200 and decoded[-200:].mean() < 50


@pytest.fixture
def warning_records() -> Iterator[list[logging.LogRecord]]:
    """Records the warnings hook writes (leuk.warnings), however the logger is configured."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("leuk.warnings")
    handler = Keep()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_exif_block_with_65535_entries_costs_bounded_work_and_output(
    warning_records: list[logging.LogRecord],
) -> None:
    data = encode(cell_like(12), "PNG", exif=exif_with_entries(65535))
    started = time.process_time()
    decoded = decode_image(data, LIMIT)
    assert time.process_time() - started < 2.0  # generous: unbounded, it took 1.3 s and more
    assert len(warning_records) <= 10  # unbounded: 61,603 lines (one per broken entry)
    assert np.array_equal(decoded.pixels, cell_like(12))
    assert decoded.check.warnings == [
        "damaged_file: EXIF block declares 65535 entries (at most 512 are read); "
        "EXIF ignored, orientation not applied"
    ]


def test_largest_jpeg_exif_block_costs_bounded_output(
    warning_records: list[logging.LogRecord],
) -> None:
    # A JPEG's EXIF (APP1) holds at most ~5,400 entries; Pillow parses it when it opens the
    # file (for the resolution), before the service can look: ~5,000 warnings, capped.
    block = b"Exif\x00\x00" + exif_with_entries(5400)
    decoded = decode_image(encode(cell_like(12), "JPEG", exif=block), LIMIT)
    assert len(warning_records) <= MAX_NOTES  # the decoder forwards new notes only
    assert len(decoded.check.warnings) == MAX_NOTES + 1
    more = re.fullmatch(
        r"damaged_file: (\d+) more decoder warnings not listed", decoded.check.warnings[-1]
    )
    assert more is not None and int(more.group(1)) > 5000


def test_exif_in_a_png_text_chunk_is_bounded_too(
    warning_records: list[logging.LogRecord],
) -> None:
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    block = exif_with_entries(40_000)  # hex-encoded under Pillow's 1 MB text-chunk limit
    text.add_text("Raw profile type exif", f"\nexif\n{len(block)}\n" + block.hex(), zip=True)
    decoded = decode_image(encode(cell_like(12), "PNG", pnginfo=text), LIMIT)
    assert len(warning_records) <= 10  # unbounded: one line per broken entry
    assert decoded.check.warnings[0].startswith("damaged_file: EXIF block declares 40000")


def test_warnings_of_one_damaged_block_are_capped_per_image(
    warning_records: list[logging.LogRecord],
) -> None:
    # 400 entries: parsed (under the entry cap), ~300 distinct warnings.
    data = encode(cell_like(12), "PNG", exif=exif_with_entries(400))
    warnings = decode_image(data, LIMIT).check.warnings
    assert len(warnings) == MAX_NOTES + 1
    assert all(w.startswith("damaged_file: Tag data larger than file") for w in warnings[:-1])
    assert re.fullmatch(r"damaged_file: \d+ more decoder warnings not listed", warnings[-1])
    logged = [r for r in warning_records if r.getMessage() == "python warning"]
    assert len(logged) == MAX_NOTES  # the rest are counted in the result, not logged
    assert int(warnings[-1].split()[1]) > 250


def test_tiff_with_an_absurd_directory_is_refused_before_parsing() -> None:
    data = bytearray(encode(cell_like(12, size=64), "TIFF"))
    ifd = int.from_bytes(data[4:8], "little")
    data[ifd : ifd + 2] = (65535).to_bytes(2, "little")
    started = time.process_time()
    with pytest.raises(InvalidImage, match="65535 entries"):
        decode_image(bytes(data), LIMIT)
    assert time.process_time() - started < 2.0


def test_decoded_pixels_are_contiguous_uint8() -> None:
    buffer = io.BytesIO(encode(cell_like(11), "PNG"))
    decoded = decode_image(buffer.getvalue(), LIMIT).pixels
    assert decoded.flags["C_CONTIGUOUS"]
