"""Optional API keys: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

Enforced by one ASGI middleware, so no route (including /docs, /metrics and unknown
paths) can forget it. Liveness and readiness stay open for orchestrators. Keys are
compared with ``hmac.compare_digest`` against every configured key. Keys carry a name and
a role (app/keys.py): the matched key is put in ``scope["state"]["api_key"]`` for the
audit trail, and routers that need a role declare ``Depends(require_role(...))``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Forbidden, Unauthorized, error_response
from app.keys import ApiKey, Role, allows

OPEN_PATHS = frozenset({"/health/live", "/health/ready"})


def _presented_key(scope: Scope) -> str | None:
    headers: dict[bytes, bytes] = {k.lower(): v for k, v in scope.get("headers", [])}
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def matching_key(presented: str | None, keys: list[ApiKey]) -> ApiKey | None:
    if presented is None:
        return None
    candidate = presented.encode("utf-8")
    matched = None
    for key in keys:  # no early exit: time does not depend on which key matched
        if hmac.compare_digest(candidate, key.secret):
            matched = key
    return matched


def require_role(needed: Role) -> Callable[[Request], Awaitable[None]]:
    """Router dependency: the key used must have a role allowing ``needed`` (no keys: open)."""

    async def check(request: Request) -> None:  # async: no thread-pool hop per request
        key: ApiKey | None = request.scope.get("state", {}).get("api_key")
        if key is not None and not allows(key.role, needed):
            raise Forbidden(
                f"The key {key.name!r} has role {key.role.value!r}; this needs {needed.value!r}."
            )

    return check


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = matching_key(_presented_key(scope), self.keys)
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthorized(headers={"WWW-Authenticate": "Bearer"}))
        scope.setdefault("state", {})["error_code"] = Unauthorized.code
        await response(scope, receive, send)
