"""Structured JSON logs on stderr. Never log image bytes, raw bodies or upload file names."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from app.context import current_request_id

LOGGER_NAME = "leuk"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "request_id":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def configure_logging(level: str) -> None:
    """Idempotent: one JSON handler on the service's logger; Python warnings logged there."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    capture_python_warnings()


# Python warnings, e.g. Pillow's "Tag data larger than file" for a damaged upload that still
# decodes: by default they are plain text on stderr (breaking the JSON log), without a request
# id. Here every one becomes a JSON record of ``leuk.warnings`` (with the request id of the
# thread's context). Texts are capped: libraries' messages name tags and sizes, never pixel
# data, but stay bounded. One damaged file can raise tens of thousands of warnings (one per
# broken EXIF entry), so inside ``limit_warning_logs`` (a request's decoding) at most
# ``MAX_WARNING_LOG_LINES`` records are written, plus one counting the rest. (What a damaged
# image reports in its own result is the decoder's business: contract.imaging.)
WARNING_TEXT_LIMIT = 200
MAX_WARNING_LOG_LINES = 20


@dataclass
class _LogAllowance:
    remaining: int
    suppressed: int = 0


_allowance: ContextVar[_LogAllowance | None] = ContextVar("leuk_warning_logs", default=None)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    allowance = _allowance.get()
    if allowance is not None:
        if allowance.remaining <= 0:
            allowance.suppressed += 1
            return
        allowance.remaining -= 1
    get_logger("warnings").warning(
        "python warning",
        extra={"category": category.__name__, "warning": str(message)[:WARNING_TEXT_LIMIT],
               "source": f"{Path(filename).name}:{lineno}"},
    )  # fmt: skip


def capture_python_warnings() -> None:
    """Log Python warnings as JSON (``_show_warning``). Done once at start-up
    (configure_logging); idempotent. Pillow's decompression-bomb warning (its fixed limit) is
    dropped: the service's own pixel limit is the one that counts (LEUK_MAX_IMAGE_PIXELS)."""
    if _is_installed():
        return
    warnings.showwarning = _show_warning
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _is_installed() -> bool:
    """Ours, directly or wrapped by the decoder's capture (contract.imaging forwards to it)."""
    handler = warnings.showwarning
    return handler is _show_warning or getattr(handler, "forward", None) is _show_warning


@contextmanager
def limit_warning_logs(max_lines: int = MAX_WARNING_LOG_LINES) -> Iterator[None]:
    """Inside the block (this thread), log at most ``max_lines`` Python warnings, then one
    record with how many were not logged. Nested blocks share the outermost allowance."""
    if _allowance.get() is not None:
        yield
        return
    allowance = _LogAllowance(max_lines)
    token = _allowance.set(allowance)
    try:
        yield
    finally:
        _allowance.reset(token)
        if allowance.suppressed:
            get_logger("warnings").warning(
                "python warnings suppressed", extra={"suppressed": allowance.suppressed}
            )
