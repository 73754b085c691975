"""Per-request context: request ID, access log line and HTTP metrics (one pure ASGI layer)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import anyio
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit.trail import ANONYMOUS
from app.context import reset_request_id, set_request_id
from app.errors import ServiceError, ShuttingDown, error_response
from app.log import get_logger
from app.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
# Errors after which reading the rest of the body is pointless (it never comes, or it is
# larger than the service takes: the connection closes instead).
_BODY_NEVER_COMES = frozenset({"body_timeout", "client_closed", "payload_too_large"})
AUDITED_ACTIONS = frozenset({"classify", "explain", "infer"})
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_log = get_logger("access")


def request_id_from(scope: Scope) -> tuple[str, bool]:
    """The caller's X-Request-ID when well-formed, else a new UUID (and False)."""
    for key, value in scope.get("headers", []):
        if key.lower() == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate, True
            return uuid.uuid4().hex, False
    return uuid.uuid4().hex, True


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, drain_limit: int = 0, drain_timeout: float = 5.0
    ) -> None:
        self.app = app
        self.metrics = metrics
        # An answer that starts before the body was read (401, 404 for an unknown model,
        # 409): the rest of the body is read and dropped first, up to this many bytes, so
        # the client gets the answer. Otherwise h11 closes a connection the client is still
        # writing to, and the client sees a broken pipe instead of the JSON error.
        self.drain_limit = drain_limit
        self.drain_timeout = drain_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, caller_id_ok = request_id_from(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = set_request_id(request_id)
        start = time.perf_counter()
        status = 500

        body_read = False

        async def receive_tracked() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                if not body_read and state.get("error_code") not in _BODY_NEVER_COMES:
                    await self._drain(receive_tracked)
                status = message["status"]
                state["response_started"] = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive_tracked, send_with_id)
        except asyncio.CancelledError:
            # The server cancels requests still running when the shutdown grace period ends
            # (a disconnected client cancels only its own work: routes._unless_client_leaves).
            # Answer them in the JSON shape instead of uvicorn's text/plain 500 + traceback.
            if state.get("response_started"):
                raise
            state["error_code"] = ShuttingDown.code
            shutting_down = ShuttingDown(headers={"Connection": "close"})
            await error_response(shutting_down)(scope, receive, send_with_id)
        except Exception:
            # Render unexpected failures here, inside the request context, so that even a
            # 500 has the JSON error shape and the request ID.
            _log.exception("unhandled error")
            if state.get("response_started"):
                raise
            state["error_code"] = ServiceError.code
            await error_response(ServiceError())(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(seconds)
            outcome = state.get("error_code") or ("ok" if status < 400 else f"http_{status}")
            _log.info(
                "request",
                extra={
                    "method": method,
                    "route": template,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "outcome": outcome,
                    "n_images": state.get("n_images"),
                    "caller_request_id_valid": caller_id_ok,
                },
            )
            audit = state.get("audit")  # classify routes: record a rejected request too
            if audit is None and status == 401 and _is_classify(method, scope["path"]):
                # Refused before any route ran (no key): recorded as an anonymous caller.
                audit = scope["app"].state.audit.begin(request_id, scope["path"], ANONYMOUS, None)
            if audit is not None:
                await audit.record_outcome(status, state.get("error_code"), seconds)
            reset_request_id(token)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop what is left of the body, at most ``drain_limit`` bytes."""
        received = 0
        with anyio.move_on_after(self.drain_timeout):
            while received <= self.drain_limit:
                message = await receive()
                if message["type"] != "http.request":
                    return
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


def _is_classify(method: str, path: str) -> bool:
    """The audited operations (classify, explain, OIP infer), by their URL alone."""
    return method == "POST" and path.rstrip("/").rsplit("/", 1)[-1] in AUDITED_ACTIONS
