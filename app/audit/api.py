"""HTTP side of the audit trail: the per-request draft (a classify-router dependency) and
``GET /v1/audit`` (admin keys only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from app.audit.store import RecordFilter, utc_timestamp
from app.audit.trail import ANONYMOUS, AuditDraft, AuditTrail
from app.errors import Forbidden, Unauthorized, ValidationFailed, openapi_errors
from app.keys import ApiKey, Role
from app.security import require_role

SAMPLE_ID_HEADER = "X-Sample-ID"
SAMPLE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_OUTCOME = re.compile(r"^(ok|[0-9]{3}|[a-z_]{1,64})$")
# ISO 8601 date or date-time (what datetime.fromisoformat reads); numbers are not times here.
_TIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:\d{2})?$"
_MAX_INT = 2**31 - 1  # the columns' range; larger numbers match nothing


def get_audit_trail(request: Request) -> AuditTrail:
    trail: AuditTrail = request.app.state.audit
    return trail


async def begin_audit(
    request: Request,
    sample_id: Annotated[
        str | None,
        Header(
            alias=SAMPLE_ID_HEADER,
            description="Optional: the caller's own pseudonymous identifier of the sample or "
            "accession (opaque printable ASCII, at most 128 characters, no spaces). Stored in "
            "the audit trail and searchable there; never put a patient's name or number here.",
            # Documented only: checked in the body below, so a refused request is recorded.
            json_schema_extra={"pattern": SAMPLE_ID.pattern},
        ),
    ] = None,
) -> None:
    """Start the audit draft of a classify request (every route on the classify router).

    The header is checked here rather than by FastAPI, so that a request refused for a
    malformed sample ID is itself recorded (FastAPI would skip this dependency)."""
    key: ApiKey | None = request.scope.get("state", {}).get("api_key")
    route = getattr(request.scope.get("route"), "path", request.url.path)
    valid = sample_id is None or SAMPLE_ID.match(sample_id) is not None
    request.state.audit = get_audit_trail(request).begin(
        request_id=request.state.request_id,
        route=route,
        caller=key.name if key is not None else ANONYMOUS,
        sample_id=sample_id if valid else None,
    )
    if not valid:
        raise ValidationFailed(
            f"{SAMPLE_ID_HEADER}: 1 to 128 printable ASCII characters, no spaces."
        )


def audit_draft(request: Request) -> AuditDraft:
    draft: AuditDraft = request.state.audit
    return draft


class AuditPage(BaseModel):
    records: list[dict[str, Any]] = Field(
        description="Records in sequence order: kind request (one per request), image (one "
        "per uploaded image) or purge; with seq, prev_hash and hash of the chain."
    )
    next_after_seq: int | None = Field(
        description="Pass as after_seq to get the next page; null: this was the last page."
    )


router = APIRouter(tags=["audit"], dependencies=[Depends(require_role(Role.admin))])


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return utc_timestamp(value if value.tzinfo else value.replace(tzinfo=UTC))


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    summary="Read the audit trail (admin keys), filtered and paginated by sequence number",
    responses=openapi_errors(Unauthorized, Forbidden, ValidationFailed),
)
def read_audit(
    trail: Annotated[AuditTrail, Depends(get_audit_trail)],
    since: Annotated[
        str | None, Query(pattern=_TIME, description="Recorded at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, Query(pattern=_TIME, description="Recorded before (ISO 8601).")
    ] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    sample_id: Annotated[str | None, Query(pattern=SAMPLE_ID.pattern)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    model_version: Annotated[int | None, Query(ge=1, le=_MAX_INT)] = None,
    outcome: Annotated[
        str | None,
        Query(
            pattern=_OUTCOME.pattern,
            description="ok (HTTP 200), an HTTP status (e.g. 422) or an error code.",
        ),
    ] = None,
    kind: Annotated[str | None, Query(pattern="^(request|image|purge)$")] = None,
    after_seq: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Return records after this seq.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    if trail.store is None:
        return AuditPage(records=[], next_after_seq=None)
    status, error_code = None, None
    if outcome is not None:
        if outcome == "ok":
            status = 200
        elif outcome.isdigit():
            status = int(outcome)
        else:
            error_code = outcome
    where = RecordFilter(
        since=_timestamp(_parse_time(since)),
        until=_timestamp(_parse_time(until)),
        request_id=request_id,
        sample_id=sample_id,
        model=model,
        model_version=model_version,
        status=status,
        error_code=error_code,
        kind=kind,
        after_seq=after_seq,
    )
    records = trail.store.query(where, limit)
    more = len(records) == limit
    return AuditPage(records=records, next_after_seq=records[-1]["seq"] if more else None)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:  # matches the pattern but is no date (e.g. month 13)
        raise ValidationFailed(f"Not a date or time: {value[:40]!r}") from exc
