"""Which format a classify answer takes (the ``Accept`` header), and rendering it.

``application/json`` (or no Accept, ``*/*``, or only types the service cannot produce):
the service's own JSON, unchanged for existing callers. ``application/fhir+json``: a FHIR
R4 Bundle. ``application/hl7-v2`` or ``x-application/hl7-v2+er7``: an HL7 v2.5.1 ORU^R01.
Quality values are honoured; on a tie the service's JSON wins. Errors keep the service's
JSON error shape whatever was asked.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from fastapi import Response

from app.protocols import fhir, hl7
from app.protocols.report import CallerReferences, ModelIdentity, reference_headers_openapi
from app.schemas import ClassifyResponse


class ReportFormat(enum.Enum):
    JSON = "application/json"
    FHIR = fhir.MEDIA_TYPE
    HL7V2 = hl7.MEDIA_TYPE


_MEDIA_TYPES: dict[str, ReportFormat] = {
    "application/json": ReportFormat.JSON,
    "application/fhir+json": ReportFormat.FHIR,
    "application/json+fhir": ReportFormat.FHIR,  # the DSTU2-era name some engines still send
    **{media: ReportFormat.HL7V2 for media in hl7.ACCEPTED_MEDIA_TYPES},
}
_PREFERENCE = (ReportFormat.JSON, ReportFormat.FHIR, ReportFormat.HL7V2)


def negotiate(accept: str | None) -> ReportFormat:
    """The format the caller prefers among those the service produces."""
    best, best_q = ReportFormat.JSON, 0.0
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        found = _MEDIA_TYPES.get(media.strip().lower())
        if found is None:
            continue
        q = _quality(params)
        if q > best_q or (q == best_q and _PREFERENCE.index(found) < _PREFERENCE.index(best)):
            best, best_q = found, q
    return best if best_q > 0 else ReportFormat.JSON


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0


def render_report(
    report_format: ReportFormat,
    response: ClassifyResponse,
    model: ModelIdentity,
    references: CallerReferences,
) -> Response:
    """A FHIR or HL7 v2 answer. Rendered on the event loop: a 64-image bundle takes about
    1.3 ms, the ORU message 0.3 ms (less than handing the work to a thread would save)."""
    issued = datetime.now(UTC)
    if report_format is ReportFormat.FHIR:
        body = fhir.bundle_json(response, model, references, issued)
        return Response(body, media_type=fhir.MEDIA_TYPE)
    message = hl7.render_oru(response, model, references, issued)
    return Response(message.encode("utf-8"), media_type=f"{hl7.MEDIA_TYPE}; charset=utf-8")


OPENAPI: dict[str, Any] = {
    "parameters": reference_headers_openapi(),
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The service's JSON (default), or with `Accept: application/fhir+json` "
        "a FHIR R4 transaction Bundle (DiagnosticReport, Observations, Device, Provenance), "
        "or with `Accept: application/hl7-v2` an HL7 v2.5.1 ORU^R01 message (ER7). See "
        "README.md, 'Integrating'.",
        "content": {
            fhir.MEDIA_TYPE: {"schema": {"type": "object", "description": "FHIR R4 Bundle"}},
            hl7.MEDIA_TYPE: {"schema": {"type": "string", "description": "HL7 v2.5.1 ORU^R01"}},
        },
    }
}
