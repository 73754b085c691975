"""Optional API keys: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

Enforced by one ASGI middleware, so no route (including /metrics and unknown paths) can
forget it. Open without a key: liveness and readiness (for orchestrators), and the API
docs (`/docs`, its assets, `/openapi.json`): they hold no patient data, and a browser
loading the page cannot attach a key to its script and stylesheet requests; the page's
Authorize button adds the key to the API calls made from it.

A request is let through when any key it presents (either header) equals a configured
key. Keys are compared as bytes: the UTF-8 encoding of the configured key against the raw
header value, so a non-ASCII key sent as UTF-8 matches.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized, error_response

DOCS_PATH = "/docs"
DOCS_ASSETS = "/docs/assets"
# The Open Inference Protocol's probes are the same kind of probe, for KServe-style platforms.
OPEN_PATHS = frozenset(
    {
        "/health/live",
        "/health/ready",
        "/v2/health/live",
        "/v2/health/ready",
        DOCS_PATH,
        "/openapi.json",
    }
)
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


def key_is_valid(presented: list[bytes], keys: list[bytes]) -> bool:
    valid = False
    for candidate in presented:
        for key in keys:  # no early exit: time does not depend on which key matched
            valid |= hmac.compare_digest(candidate, key)
    return valid


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode("utf-8") for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or is_open(scope["path"])
            or key_is_valid(presented_keys(scope), self.keys)
        ):
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthorized(headers={"WWW-Authenticate": "Bearer"}))
        scope.setdefault("state", {})["error_code"] = Unauthorized.code
        await response(scope, receive, send)
