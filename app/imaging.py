"""Uploads -> checked pixels: the contract's decoder, the card's input checks, the service's
errors.

Decoding itself is ``contract.imaging`` (the one decoder training and the benchmark use
too); the out-of-distribution rule is ``app.input_checks``. This module only joins them for a
model version (its card's rule and expected size: larger images are downscaled to it right
after decoding) and turns the decoder's errors into the service's (same codes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.errors import (
    ImageTooLarge,
    InvalidImage,
    ServiceError,
    TruncatedImage,
    UnsupportedImageMode,
)
from app.input_checks import DEFAULT_RULE, InputCheck, check_input
from app.log import limit_warning_logs
from contract import imaging as decoder
from contract.card import InputChecks
from contract.imaging import OpenedImage

__all__ = ["DecodedImage", "OpenedImage", "decode_image", "decode_opened", "open_image"]

_SERVICE_ERRORS: dict[str, type[ServiceError]] = {
    error.code: error
    for error in (InvalidImage, TruncatedImage, ImageTooLarge, UnsupportedImageMode)
}


@dataclass(frozen=True)
class DecodedImage:
    pixels: NDArray[np.uint8]  # [H, W, 3] RGB, C-contiguous
    source_format: str
    source_mode: str
    check: InputCheck


@contextmanager
def _as_service_errors() -> Iterator[None]:
    """The decoder's errors as the service's; its warnings' log lines bounded (a request
    shares one allowance, app.log.limit_warning_logs)."""
    try:
        with limit_warning_logs():
            yield
    except decoder.ImageError as exc:
        raise _SERVICE_ERRORS[exc.code](exc.detail) from exc


def open_image(data: bytes, max_pixels: int, rule: InputChecks = DEFAULT_RULE) -> OpenedImage:
    """Read the header only (limits are checked before any pixel is decoded)."""
    with _as_service_errors():
        return decoder.open_image(data, max_pixels, max_side=max(rule.expected_size))


def decode_opened(opened: OpenedImage, rule: InputChecks = DEFAULT_RULE) -> DecodedImage:
    """Pixels and their input check; the decoder's notes (damage, downscale) lead the
    check's warnings."""
    with _as_service_errors():
        decoded = decoder.decode_opened(opened)
    check = check_input(decoded.pixels, decoded.source_size, rule)
    check.warnings[:0] = decoded.notes
    return DecodedImage(decoded.pixels, decoded.source_format, decoded.source_mode, check)


def decode_image(data: bytes, max_pixels: int, rule: InputChecks = DEFAULT_RULE) -> DecodedImage:
    return decode_opened(open_image(data, max_pixels, rule), rule)
