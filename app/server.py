"""The HTTP edge: uvicorn's h11 protocol with the service's limits and JSON errors.

h11, not httptools: uvicorn gives httptools no header size limit (an unterminated header
is buffered without bound), while h11 stops at ``h11_max_incomplete_event_size``. uvicorn
has no timeout for a slow request head, and answers a malformed request (400) and a request
over its concurrency limit (503) in text/plain; ``LimitedH11Protocol`` adds the timeout and
answers both in the service's JSON error shape. Keep-alive and the graceful-shutdown bound
are uvicorn's own settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.errors import BadHttpRequest, ErrorBody, ErrorResponse, ServiceError, TooManyConnections
from app.settings import Settings


def error_bytes(error: ServiceError) -> bytes:
    """The JSON error body, for responses sent before any request (and request ID) exists."""
    body = ErrorResponse(error=ErrorBody(code=error.code, detail=error.detail, request_id=None))
    return body.model_dump_json().encode()


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-head timeout, a JSON 400 and a JSON 503 at the
    concurrency limit."""

    header_timeout_seconds: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        # uvicorn's own check would answer in text/plain: the same check, in _within_limit.
        self._max_concurrency = self.limit_concurrency
        self.limit_concurrency = None
        self.app = self._within_limit(self.app)

    def _within_limit(self, app: ASGIApp) -> ASGIApp:
        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            limit = self._max_concurrency
            # uvicorn checks before adding the request's task; here it is already counted.
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) > limit):
                self.logger.warning("Exceeded concurrency limit.")
                await _send_error(send, TooManyConnections())
                return
            await app(scope, receive, send)

        return admit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head must arrive in time too

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_seconds, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        # IDLE: no complete request head since the connection opened or the last response.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        body = error_bytes(BadHttpRequest(msg))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


async def _send_error(send: Send, error: ServiceError) -> None:
    body = error_bytes(error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def protocol_for(settings: Settings) -> type[LimitedH11Protocol]:
    """The protocol class with this configuration's head timeout (uvicorn takes a class)."""
    return type(
        "LimitedH11Protocol",
        (LimitedH11Protocol,),
        {"header_timeout_seconds": settings.header_timeout_seconds},
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Every limit of the HTTP edge, as ``uvicorn.run`` keyword arguments."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_for(settings),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_concurrency,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
