"""What every route that takes images shares: its OpenAPI body and errors, the version path
parameter, and cancelling the work when the client leaves (classify and explain use these)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from app.errors import (
    AuditUnavailable,
    BodyTimeout,
    ClientClosed,
    DecodeMemoryBusy,
    EmptyBody,
    Forbidden,
    ImageTooLarge,
    InvalidImage,
    InvalidMultipart,
    InvalidReference,
    MissingImages,
    ModelNotFound,
    ModelUnavailable,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTooLargeDecoded,
    ShuttingDown,
    TooManyFiles,
    TruncatedImage,
    Unauthorized,
    UnexpectedField,
    UnsupportedImageMode,
    UnsupportedMediaType,
    VersionNotFound,
    openapi_errors,
)
from app.store import parse_version

T = TypeVar("T")

CLASSIFY_ERRORS = openapi_errors(
    EmptyBody,
    InvalidMultipart,
    InvalidReference,
    Unauthorized,
    Forbidden,
    ModelNotFound,
    VersionNotFound,
    PayloadTooLarge,
    ImageTooLarge,
    RequestTooLargeDecoded,
    TooManyFiles,
    UnsupportedMediaType,
    InvalidImage,
    TruncatedImage,
    UnsupportedImageMode,
    MissingImages,
    UnexpectedField,
    NotReady,
    ModelUnavailable,
    Overloaded,
    ShuttingDown,
    BodyTimeout,
    DecodeMemoryBusy,
    AuditUnavailable,
)
CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either multipart/form-data with one or more files in the field "
        "`files` (or `file`), or the raw bytes of one image with an image Content-Type. "
        "BMP, PNG, JPEG and TIFF are accepted.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["files"],
                    # Other fields are refused (422 unexpected_field), not ignored.
                    "additionalProperties": False,
                }
            },
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("image/bmp", "image/png", "image/jpeg", "image/tiff")
            },
        },
    }
}


def path_version(value: str) -> int:
    """A ``{version}`` path parameter as an int; anything else is 404 ``version_not_found``."""
    version = parse_version(value)
    if version is None:
        raise VersionNotFound(f"Versions are positive integers, got {value[:20]!r}.")
    return version


async def unless_client_leaves(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """``work()``, cancelled if the client disconnects first (then 499 ``client_closed``, for
    the log): nobody would read the answer, and its images still queued are never run."""
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as watcher:
        with anyio.CancelScope() as work_scope:
            watcher.start_soon(_cancel_on_disconnect, request, work_scope)
            try:
                results.append(await work())
            except Exception as exc:  # raised below, outside the task group (no ExceptionGroup)
                errors.append(exc)
        watcher.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if not results:
        raise ClientClosed()
    return results[0]


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    # The body has been read, so the next ASGI message is the disconnect (uvicorn sends it
    # when the connection drops, or after the response).
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
