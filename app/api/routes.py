"""Routes: health, model info, classify, metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import DataPlaneDep, MetricsDep, RequestIdDep, SettingsDep
from app.audit.api import audit_draft, begin_audit, get_audit_trail
from app.audit.trail import AuditTrail
from app.errors import (
    AuditUnavailable,
    BodyTimeout,
    ClientClosed,
    DecodeMemoryBusy,
    EmptyBody,
    Forbidden,
    ImageTooLarge,
    InvalidImage,
    InvalidMultipart,
    InvalidReference,
    MissingImages,
    ModelNotFound,
    ModelUnavailable,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTooLargeDecoded,
    ShuttingDown,
    TooManyFiles,
    TruncatedImage,
    Unauthorized,
    UnexpectedField,
    UnsupportedImageMode,
    UnsupportedMediaType,
    VersionNotFound,
    openapi_errors,
)
from app.keys import Role
from app.protocols import negotiation
from app.protocols.report import CallerReferences, ModelIdentity
from app.schemas import ClassifyResponse, HealthSummary, Live, ModelInfo, ModelList, Ready
from app.security import require_role
from app.store import parse_version
from app.uploads import read_images

health = APIRouter(tags=["health"])
models = APIRouter(tags=["models"])
# Every route on this router is audited (app/audit) and needs a classify key; the audit
# draft starts first, so a refused key's request is recorded too.
classify = APIRouter(
    tags=["classify"], dependencies=[Depends(begin_audit), Depends(require_role(Role.classify))]
)
operations = APIRouter(tags=["operations"])

_AUTH = (Unauthorized,)
_CLASSIFY_ERRORS = openapi_errors(
    EmptyBody,
    InvalidMultipart,
    InvalidReference,
    Unauthorized,
    Forbidden,
    ModelNotFound,
    VersionNotFound,
    PayloadTooLarge,
    ImageTooLarge,
    RequestTooLargeDecoded,
    TooManyFiles,
    UnsupportedMediaType,
    InvalidImage,
    TruncatedImage,
    UnsupportedImageMode,
    MissingImages,
    UnexpectedField,
    NotReady,
    ModelUnavailable,
    Overloaded,
    ShuttingDown,
    BodyTimeout,
    DecodeMemoryBusy,
    AuditUnavailable,
)
_CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either multipart/form-data with one or more files in the field "
        "`files` (or `file`), or the raw bytes of one image with an image Content-Type. "
        "BMP, PNG, JPEG and TIFF are accepted.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["files"],
                    # Other fields are refused (422 unexpected_field), not ignored.
                    "additionalProperties": False,
                }
            },
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("image/bmp", "image/png", "image/jpeg", "image/tiff")
            },
        },
    }
}


def _version(value: str) -> int:
    version = parse_version(value)
    if version is None:
        raise VersionNotFound(f"Versions are positive integers, got {value[:20]!r}.")
    return version


# Routes that read the store from disk are plain ``def``: FastAPI runs them in its thread
# pool, off the event loop.


# --- health ------------------------------------------------------------------------------
@health.get("/health/live", response_model=Live, summary="Liveness: the process serves HTTP")
async def live() -> Live:
    return Live()


@health.get(
    "/health/ready",
    response_model=Ready,
    summary="Readiness: the default model is loaded, verified and warm",
    responses=openapi_errors(NotReady),
)
def ready(dataplane: DataPlaneDep, request: Request) -> Ready:
    """Plain ``def`` (thread pool): a failing audit store is re-checked here, a blocking call.
    Under the fail-closed policy a process that cannot record answers cannot serve them, so
    it is not ready: a load balancer sends the work to a replica that can."""
    loaded = dataplane.lifecycle.served_default()
    trail = get_audit_trail(request)
    audit = trail.health()
    if trail.blocks_classify(audit):
        raise NotReady(f"The audit trail cannot be written ({audit.last_error}).")
    return Ready(model=loaded.name, version=loaded.version)


@health.get(
    "/health",
    response_model=HealthSummary,
    summary="Health summary: readiness, why not, every model version's state",
    responses=openapi_errors(*_AUTH),
)
def health_summary(dataplane: DataPlaneDep, request: Request) -> JSONResponse:
    summary = dataplane.health()
    trail: AuditTrail = get_audit_trail(request)
    summary.audit = trail.health()
    healthy = summary.ready and not trail.blocks_classify(summary.audit)
    return JSONResponse(summary.model_dump(), status_code=200 if healthy else 503)


# --- models ------------------------------------------------------------------------------
@models.get(
    "/model-info",
    response_model=ModelInfo,
    summary="The default model: card, metrics, hashes, load time, intended use",
    responses=openapi_errors(Unauthorized, NotReady, ModelUnavailable),
)
def default_model_info(dataplane: DataPlaneDep) -> ModelInfo:
    return dataplane.model_info(None)


@models.get(
    "/v1/models",
    response_model=ModelList,
    summary="Every model and version in the store with its state",
    responses=openapi_errors(*_AUTH),
)
def list_models(dataplane: DataPlaneDep) -> ModelList:
    return ModelList(
        default_model=dataplane.lifecycle.default_model, models=dataplane.registry.describe()
    )


@models.get(
    "/v1/models/{name}",
    response_model=ModelInfo,
    summary="One model (its served or newest version)",
    responses=openapi_errors(Unauthorized, ModelNotFound, ModelUnavailable),
)
def model_info(name: str, dataplane: DataPlaneDep) -> ModelInfo:
    return dataplane.model_info(name)


@models.get(
    "/v1/models/{name}/versions/{version}",
    response_model=ModelInfo,
    summary="One model version",
    responses=openapi_errors(Unauthorized, ModelNotFound, VersionNotFound, ModelUnavailable),
)
def model_version_info(name: str, version: str, dataplane: DataPlaneDep) -> ModelInfo:
    return dataplane.model_info(name, _version(version))


@models.get(
    "/v1/models/{name}/ready",
    response_model=Ready,
    summary="Is this model's served version loaded? (KServe-style; does not trigger a load)",
    responses=openapi_errors(Unauthorized, ModelNotFound, NotReady),
)
async def model_ready(name: str, dataplane: DataPlaneDep) -> Ready:
    loaded = dataplane.model_ready(name)
    return Ready(model=loaded.name, version=loaded.version)


# --- classify ----------------------------------------------------------------------------
async def _classify(
    request: Request,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: str,
    name: str | None,
    version: int | None,
) -> ClassifyResponse | Response:
    audit = audit_draft(request)
    report_format = negotiation.negotiate(request.headers.get("accept"))
    # A bad reference is 422 before any work.
    if report_format is negotiation.ReportFormat.JSON:
        CallerReferences.check_lengths(request.headers)
        references = CallerReferences()
    else:
        references = CallerReferences.from_headers(request.headers)
    model = audit.model = await dataplane.resolve(name, version)  # 404 before reading the body
    payloads = audit.payloads = await read_images(
        request, settings.max_upload_bytes, settings.max_files, settings.body_timeout_seconds
    )
    request.state.n_images = len(payloads)
    result = await _unless_client_leaves(
        request, lambda: dataplane.classify(model, payloads, request_id, audit.note_decoded)
    )
    await audit.record_result(result)  # fail-closed: no record, no result
    if report_format is negotiation.ReportFormat.JSON:
        return result
    return negotiation.render_report(report_format, result, ModelIdentity.of(model), references)


async def _unless_client_leaves(
    request: Request, work: Callable[[], Awaitable[ClassifyResponse]]
) -> ClassifyResponse:
    """``work()``, cancelled if the client disconnects first (then 499 ``client_closed``, for
    the log): nobody would read the answer, and its images still queued are never run."""
    results: list[ClassifyResponse] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as watcher:
        with anyio.CancelScope() as work_scope:
            watcher.start_soon(_cancel_on_disconnect, request, work_scope)
            try:
                results.append(await work())
            except Exception as exc:  # raised below, outside the task group (no ExceptionGroup)
                errors.append(exc)
        watcher.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if not results:
        raise ClientClosed()
    return results[0]


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    # The body has been read, so the next ASGI message is the disconnect (uvicorn sends it
    # when the connection drops, or after the response).
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


_CLASSIFY_DOC = dict(
    response_model=ClassifyResponse,
    responses={**_CLASSIFY_ERRORS, **negotiation.RESPONSES},
    openapi_extra={**_CLASSIFY_BODY, **negotiation.OPENAPI},
)


@classify.post("/v1/classify", summary="Classify images with the default model", **_CLASSIFY_DOC)  # type: ignore[arg-type]
async def classify_default(
    request: Request, dataplane: DataPlaneDep, settings: SettingsDep, request_id: RequestIdDep
) -> ClassifyResponse | Response:
    return await _classify(request, dataplane, settings, request_id, None, None)


@classify.post("/v1/models/{name}/classify", summary="Classify with a named model", **_CLASSIFY_DOC)  # type: ignore[arg-type]
async def classify_model(
    name: str,
    request: Request,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ClassifyResponse | Response:
    return await _classify(request, dataplane, settings, request_id, name, None)


@classify.post(
    "/v1/models/{name}/versions/{version}/classify",
    summary="Classify with one model version",
    **_CLASSIFY_DOC,  # type: ignore[arg-type]
)
async def classify_version(
    name: str,
    version: str,
    request: Request,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ClassifyResponse | Response:
    return await _classify(request, dataplane, settings, request_id, name, _version(version))


# --- operations --------------------------------------------------------------------------
@operations.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **openapi_errors(*_AUTH)},
)
async def metrics(metrics: MetricsDep, dataplane: DataPlaneDep) -> Response:
    metrics.queue_depth.set(dataplane.batcher.queue_depth())
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
