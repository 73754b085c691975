"""Explain routes: classification plus a heatmap per image (app/explain.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.api.deps import DataPlaneDep, RequestIdDep, SettingsDep
from app.api.image_routes import CLASSIFY_BODY, CLASSIFY_ERRORS, path_version, unless_client_leaves
from app.audit.api import audit_draft, begin_audit
from app.errors import ExplainBusy, ExplainUnsupported, openapi_errors
from app.explain import Explainer
from app.keys import Role
from app.schemas import ExplainResponse
from app.security import require_role
from app.uploads import read_images

# Explanations classify too: audited like every classify route, and need a classify key.
explain = APIRouter(
    tags=["explain"],
    dependencies=[Depends(begin_audit), Depends(require_role(Role.classify))],
)


def get_explainer(request: Request) -> Explainer:
    explainer: Explainer = request.app.state.explainer
    return explainer


ExplainerDep = Annotated[Explainer, Depends(get_explainer)]

_DOC = dict(
    response_model=ExplainResponse,
    responses={**CLASSIFY_ERRORS, **openapi_errors(ExplainUnsupported, ExplainBusy)},
    openapi_extra=CLASSIFY_BODY,
)


async def _explain(
    request: Request,
    explainer: Explainer,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: str,
    name: str | None,
    version: int | None,
) -> ExplainResponse:
    audit = audit_draft(request)
    model = audit.model = await dataplane.resolve(name, version)
    if model.card.explain is None:  # before reading the body, like an unknown model
        raise ExplainUnsupported(f"{model.name} version {model.version} has no explanations.")
    payloads = audit.payloads = await read_images(
        request, settings.max_upload_bytes, settings.max_files, settings.body_timeout_seconds
    )
    request.state.n_images = len(payloads)
    result = await unless_client_leaves(
        request, lambda: explainer.explain(model, payloads, request_id)
    )
    await audit.record_result(result)  # fail-closed: no record, no result
    return result


@explain.post("/v1/explain", summary="Classify and explain with the default model", **_DOC)  # type: ignore[arg-type]
async def explain_default(
    request: Request,
    explainer: ExplainerDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ExplainResponse:
    return await _explain(request, explainer, dataplane, settings, request_id, None, None)


@explain.post("/v1/models/{name}/explain", summary="Explain with a named model", **_DOC)  # type: ignore[arg-type]
async def explain_model(
    name: str,
    request: Request,
    explainer: ExplainerDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ExplainResponse:
    return await _explain(request, explainer, dataplane, settings, request_id, name, None)


@explain.post(
    "/v1/models/{name}/versions/{version}/explain",
    summary="Explain with one model version",
    **_DOC,  # type: ignore[arg-type]
)
async def explain_version(
    name: str,
    version: str,
    request: Request,
    explainer: ExplainerDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ExplainResponse:
    return await _explain(
        request, explainer, dataplane, settings, request_id, name, path_version(version)
    )
