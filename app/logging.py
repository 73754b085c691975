"""Structured JSON logs on stderr. Never log image bytes, raw bodies or upload file names."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
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
# One damaged file can raise tens of thousands of warnings (one per broken EXIF entry), so the
# output is bounded too: a collecting block keeps ``MAX_NOTES`` distinct texts and counts the
# rest, and inside ``limit_warning_logs`` (a request; each collecting block opens one if none
# is open) at most ``MAX_WARNING_LOG_LINES`` records are written, plus one counting the rest.
WARNING_TEXT_LIMIT = 200
MAX_NOTES = 5
MAX_WARNING_LOG_LINES = 20


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


@dataclass
class _LogAllowance:
    remaining: int
    suppressed: int = 0


_collected: ContextVar[WarningNotes | None] = ContextVar("leuk_collected_warnings", default=None)
_allowance: ContextVar[_LogAllowance | None] = ContextVar("leuk_warning_logs", default=None)


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
    listed = notes.add(text) if notes is not None else True
    allowance = _allowance.get()
    if allowance is not None:
        if not listed or allowance.remaining <= 0:
            allowance.suppressed += 1
            return
        allowance.remaining -= 1
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


@contextmanager
def collect_warnings() -> Iterator[WarningNotes]:
    """The distinct Python warnings raised in this context (this thread) inside the block,
    under ``limit_warning_logs``; needs ``capture_python_warnings`` in force (the service
    installs it at start-up)."""
    notes = WarningNotes()
    token = _collected.set(notes)
    try:
        with limit_warning_logs():
            yield notes
    finally:
        _collected.reset(token)
