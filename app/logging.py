"""Structured JSON logs on stderr. Never log image bytes, raw bodies or upload file names."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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
# id, and each distinct text only once per process. Here every one becomes a JSON record of
# ``leuk.warnings`` (with the request id of the thread's context), and code that wants them
# (decode_image) collects those raised inside a block with ``collect_warnings``. Warning texts
# are capped: libraries' messages name tags and sizes, never pixel data, but stay bounded.
_collected: ContextVar[list[str] | None] = ContextVar("leuk_collected_warnings", default=None)
WARNING_TEXT_LIMIT = 200


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = str(message)[:WARNING_TEXT_LIMIT]
    notes = _collected.get()
    if notes is not None:
        notes.append(text)
    get_logger("warnings").warning(
        "python warning",
        extra={"category": category.__name__, "warning": text,
               "source": f"{Path(filename).name}:{lineno}"},
    )  # fmt: skip


def capture_python_warnings() -> None:
    """Route warnings through ``_show_warning``. Done once at start-up (configure_logging);
    idempotent."""
    if warnings.showwarning is _show_warning:
        return
    warnings.showwarning = _show_warning
    # Every occurrence of a Pillow warning, not the first per text: each damaged upload is
    # reported with its own request. Pillow's decompression-bomb warning (its fixed limit) is
    # dropped: the service's own pixel limit is the one that counts (decode_image).
    warnings.filterwarnings("always", module=r"PIL(\.|$)")
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Texts of the Python warnings raised in this context (this thread) inside the block;
    needs ``capture_python_warnings`` in force (the service installs it at start-up)."""
    notes: list[str] = []
    token = _collected.set(notes)
    try:
        yield notes
    finally:
        _collected.reset(token)
