"""Routes: health, model info, classify, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import DataPlaneDep, MetricsDep, RequestIdDep, SettingsDep
from app.api.image_routes import CLASSIFY_BODY, CLASSIFY_ERRORS, path_version, unless_client_leaves
from app.audit.api import audit_draft, begin_audit, get_audit_trail
from app.audit.trail import AuditTrail
from app.errors import (
    ModelNotFound,
    ModelUnavailable,
    NotReady,
    Unauthorized,
    VersionNotFound,
    openapi_errors,
)
from app.keys import Role
from app.protocols import negotiation
from app.protocols.report import CallerReferences, ModelIdentity
from app.schemas import ClassifyResponse, HealthSummary, Live, ModelInfo, ModelList, Ready
from app.security import require_role
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
    return dataplane.model_info(name, path_version(version))


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
    result = await unless_client_leaves(
        request, lambda: dataplane.classify(model, payloads, request_id, audit.note_decoded)
    )
    await audit.record_result(result)  # fail-closed: no record, no result
    if report_format is negotiation.ReportFormat.JSON:
        return result
    return negotiation.render_report(report_format, result, ModelIdentity.of(model), references)


_CLASSIFY_DOC = dict(
    response_model=ClassifyResponse,
    responses={**CLASSIFY_ERRORS, **negotiation.RESPONSES},
    openapi_extra={**CLASSIFY_BODY, **negotiation.OPENAPI},
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
    return await _classify(request, dataplane, settings, request_id, name, path_version(version))


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
