"""The audit trail's part of the /health body (no imports from the rest of the app)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class AuditHealth(BaseModel):
    state: Literal["ok", "failing", "disabled"] = Field(
        description="ok: the last write succeeded; failing: the last write (or a check) failed."
    )
    backend: str | None = Field(description="sqlite or postgresql.")
    database: str | None = Field(description="Database URL without its password.")
    failure_policy: str
    last_error: str | None
    queue_depth: int
