"""API keys with a name and a role, parsed from ``LEUK_API_KEYS`` / ``LEUK_API_KEYS_FILE``.

Each entry is either ``name:role:key`` or a bare key. A bare key is a ``classify`` key named
``key-<N>`` (its 1-based position among the bare keys), so key lists written before roles
existed keep working unchanged. The name is what the audit trail records as the caller; the
key itself is never stored or logged.

Roles (each includes nothing of another; ``admin`` can do everything):

- ``classify``: classify images, read health, models and metrics;
- ``read``: read health, models and metrics (no classify, no audit trail);
- ``admin``: everything, including ``GET /v1/audit``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    classify = "classify"
    read = "read"
    admin = "admin"


_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: Role
    secret: bytes

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return f"ApiKey(name={self.name!r}, role={self.role.value!r})"


def parse_api_keys(entries: list[str]) -> list[ApiKey]:
    """Parse key entries (``name:role:key`` or a bare key); names must be unique."""
    keys: list[ApiKey] = []
    bare = 0
    for entry in entries:
        name, role, secret = _split(entry)
        if name is None:
            bare += 1
            name = f"key-{bare}"
        if any(key.name == name for key in keys):
            raise ValueError(f"API key name {name!r} is used twice")
        keys.append(ApiKey(name, role, secret.encode("utf-8")))
    return keys


def _split(entry: str) -> tuple[str | None, Role, str]:
    parts = entry.split(":", 2)
    if len(parts) == 3 and _NAME.match(parts[0]) and parts[1] in Role.__members__ and parts[2]:
        return parts[0], Role(parts[1]), parts[2]
    return None, Role.classify, entry


def allows(role: Role, needed: Role) -> bool:
    """May a key with ``role`` use an endpoint that needs ``needed``?"""
    return role is Role.admin or role is needed or needed is Role.read
