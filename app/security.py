"""Optional API keys: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

Enforced by one ASGI middleware, so no route (including /docs, /metrics and unknown
paths) can forget it. Liveness and readiness stay open for orchestrators. Keys are
compared with ``hmac.compare_digest`` against every configured key.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized, error_response

OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/", "/ui", "/ui/"})
OPEN_PREFIXES = ("/ui/static/",)  # the review page's files: no data; its API calls need a key


def _presented_key(scope: Scope) -> str | None:
    headers: dict[bytes, bytes] = {k.lower(): v for k, v in scope.get("headers", [])}
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_is_valid(presented: str | None, keys: list[bytes]) -> bool:
    if presented is None:
        return False
    candidate = presented.encode("utf-8")
    valid = False
    for key in keys:  # no early exit: time does not depend on which key matched
        valid |= hmac.compare_digest(candidate, key)
    return valid


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode("utf-8") for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in OPEN_PATHS
            or scope["path"].startswith(OPEN_PREFIXES)
            or key_is_valid(_presented_key(scope), self.keys)
        ):
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthorized(headers={"WWW-Authenticate": "Bearer"}))
        scope.setdefault("state", {})["error_code"] = Unauthorized.code
        await response(scope, receive, send)
