"""Optional API keys: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

Enforced by one ASGI middleware, so no route (including /metrics and unknown paths) can
forget it. Open without a key: liveness and readiness (for orchestrators), and the API
docs (`/docs`, its assets, `/openapi.json`): they hold no patient data, and a browser
loading the page cannot attach a key to its script and stylesheet requests; the page's
Authorize button adds the key to the API calls made from it.

A request is let through when any key it presents (either header) equals a configured
key. Keys are compared as bytes: the UTF-8 encoding of the configured key against the raw
header value, so a non-ASCII key sent as UTF-8 matches. Keys carry a name and a role
(app/keys.py): the matched key is put in ``scope["state"]["api_key"]`` for the audit trail,
and routers that need a role declare ``Depends(require_role(...))``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Forbidden, Unauthorized, error_response
from app.keys import ApiKey, Role, allows

DOCS_PATH = "/docs"
DOCS_ASSETS = "/docs/assets"
# The Open Inference Protocol's probes are the same kind of probe, for KServe-style platforms;
# the review page (/, /ui) and its files hold no data (its API calls need a key).
OPEN_PATHS = frozenset(
    {
        "/health/live",
        "/health/ready",
        "/v2/health/live",
        "/v2/health/ready",
        DOCS_PATH,
        "/openapi.json",
        "/",
        "/ui",
        "/ui/",
    }
)
OPEN_PREFIXES = (DOCS_ASSETS + "/", "/ui/static/")
# HTTP's optional whitespace around a header value (RFC 9110 5.6.3).
_OWS = b" \t"


def presented_keys(scope: Scope) -> list[bytes]:
    """Every non-empty key the request carries, raw bytes (repeated headers included)."""
    keys: list[bytes] = []
    for name, value in scope.get("headers", []):
        name = name.lower()
        if name == b"x-api-key":
            keys.append(value.strip(_OWS))
        elif name == b"authorization":
            scheme, _, token = value.strip(_OWS).partition(b" ")
            if scheme.lower() == b"bearer":
                keys.append(token.strip(_OWS))
    return [key for key in keys if key]


def matching_key(presented: list[bytes], keys: list[ApiKey]) -> ApiKey | None:
    """The configured key one of the presented ones equals, if any."""
    matched = None
    for candidate in presented:
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


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = matching_key(presented_keys(scope), self.keys)
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthorized(headers={"WWW-Authenticate": "Bearer"}))
        scope.setdefault("state", {})["error_code"] = Unauthorized.code
        await response(scope, receive, send)
