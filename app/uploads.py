"""Reading images out of a request body: where 413s and multipart rules are decided.

The body is never read past ``max_upload_bytes``: a larger ``Content-Length`` is refused
before reading, and the stream is counted while it is read (chunked uploads have no
length). Multipart parsing stops at the first file past ``max_files``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anyio
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from app.errors import (
    BodyTimeout,
    ClientClosed,
    EmptyBody,
    InvalidMultipart,
    MissingImages,
    PayloadTooLarge,
    TooManyFiles,
    UnexpectedField,
    UnsupportedMediaType,
)

FILE_FIELDS = frozenset({"files", "file"})
RAW_IMAGE_TYPES = frozenset(
    {
        "image/bmp",
        "image/x-bmp",
        "image/x-ms-bmp",
        "image/png",
        "image/jpeg",
        "image/jpg",
        "image/tiff",
        "image/tif",
        "application/octet-stream",
    }
)


class _CountingStream:
    """Yields the request body, raising PayloadTooLarge as soon as it passes the limit.

    uvicorn has no body-read timeout, so a client that stops sending mid-body would hold its
    connection and buffers for ever: each chunk must arrive within ``idle_timeout`` seconds.
    """

    def __init__(self, request: Request, limit: int, idle_timeout: float) -> None:
        self._request = request
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.received = 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        body = self._request.stream()
        while True:
            try:
                with anyio.fail_after(self._idle_timeout):
                    chunk = await anext(body)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise BodyTimeout() from None
            except ClientDisconnect:
                raise ClientClosed() from None
            self.received += len(chunk)
            if self.received > self._limit:
                raise PayloadTooLarge(f"The request body exceeds {self._limit} bytes.")
            if chunk:
                yield chunk


def _declared_length(request: Request, limit: int) -> int | None:
    header = request.headers.get("content-length")
    if header is None:
        return None
    try:
        length = int(header)
    except ValueError:
        raise InvalidMultipart("Content-Length is not an integer.") from None
    if length > limit:
        raise PayloadTooLarge(f"The request body ({length} bytes) exceeds {limit} bytes.")
    return length


async def read_images(
    request: Request, max_bytes: int, max_files: int, body_timeout: float
) -> list[bytes]:
    """The image payloads of a classify request, in upload order."""
    if _declared_length(request, max_bytes) == 0:
        raise EmptyBody()
    raw_type, options = parse_options_header(request.headers.get("content-type", ""))
    content_type = raw_type.decode("latin-1").lower()
    stream = _CountingStream(request, max_bytes, body_timeout)
    if content_type == "multipart/form-data":
        if not options.get(b"boundary"):
            raise InvalidMultipart("multipart/form-data needs a boundary parameter.")
        payloads = await _read_multipart(request, stream, max_files)
    elif content_type in RAW_IMAGE_TYPES or content_type.startswith("image/"):
        payloads = [b"".join([chunk async for chunk in stream.chunks()])]
    else:
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'!r} is not accepted. "
            + UnsupportedMediaType.default_detail
        )
    if stream.received == 0:
        raise EmptyBody()
    return payloads


async def _read_multipart(request: Request, stream: _CountingStream, max_files: int) -> list[bytes]:
    parser = MultiPartParser(request.headers, stream.chunks(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if stream.received == 0:
            raise EmptyBody() from exc
        if exc.message.startswith("Too many files"):
            raise TooManyFiles(f"At most {max_files} images per request.") from exc
        raise InvalidMultipart(f"Invalid multipart body: {exc.message}") from exc
    try:
        payloads: list[bytes] = []
        for name, value in form.multi_items():
            if name not in FILE_FIELDS:
                raise UnexpectedField(
                    f"Unexpected multipart field {name[:64]!r}: send images in 'files' (or 'file')."
                )
            if not isinstance(value, UploadFile):
                raise UnexpectedField(f"Field {name!r} must be a file upload, not text.")
            payloads.append(await value.read())
    finally:
        await form.close()
    if not payloads:
        if stream.received == 0:
            raise EmptyBody()
        raise MissingImages()
    return payloads


async def read_body(request: Request, max_bytes: int, idle_timeout: float) -> bytes:
    """The whole body of a non-image request (an inference request), under the same limits."""
    if _declared_length(request, max_bytes) == 0:
        raise EmptyBody()
    stream = _CountingStream(request, max_bytes, idle_timeout)
    body = b"".join([chunk async for chunk in stream.chunks()])
    if not body:
        raise EmptyBody()
    return body
