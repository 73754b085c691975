"""``create_app(settings)``: the only place the service is assembled (nothing at import time).

Served by ``python -m app`` (app/__main__.py), which adds the HTTP limits of app/server.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import explain as explain_routes
from app.api import routes
from app.api.ui import mount_ui
from app.audit import api as audit_api
from app.audit.trail import AuditTrail
from app.batching import Batcher
from app.dataplane import DataPlane
from app.errors import install_error_handlers
from app.explain import Explainer
from app.keys import parse_api_keys
from app.lifecycle import Lifecycle
from app.log import configure_logging, get_logger
from app.metrics import Metrics
from app.middleware import RequestContextMiddleware
from app.protocols import oip
from app.registry import ModelRegistry, warmup_runtime
from app.runtime import configure_tensorflow, tune_malloc
from app.security import DOCS_ASSETS, DOCS_PATH, ApiKeyMiddleware, is_open
from app.settings import Settings
from app.store import ModelStore

_log = get_logger("lifecycle")
# Swagger UI 5 assets vendored from swagger-ui-dist (see the README there).
SWAGGER_UI_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"

DESCRIPTION = """
Classifies a microscope image of one segmented white blood cell (C-NMC 2019 style:
450x450, single cell on a black background) as **ALL lymphoblast** (`all`) or
**normal** (`hem`).

Research / decision-support use only; not a diagnostic device. Every error response has
the shape `{"error": {"code", "detail", "request_id"}}`. When API keys are configured,
every endpoint except `/health/live`, `/health/ready` and these docs (`/docs`, its assets,
`/openapi.json`) needs `X-API-Key: <key>` or `Authorization: Bearer <key>` (the Authorize
button sets it for the calls made from this page).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()
    registry = ModelRegistry(
        ModelStore(settings.model_store),
        warmup=warmup_runtime(settings.warmup_batch_sizes),
        batching="per_image" if settings.exact_batching else "stacked",
    )
    batcher = Batcher(
        max_batch_size=settings.max_batch_size,
        max_batch_wait_s=settings.max_batch_wait_ms / 1000.0,
        max_queue=settings.max_queue,
        observer=metrics.observe_batch,
        workers=settings.inference_workers,
        exact=settings.exact_batching,
    )
    lifecycle = Lifecycle(settings, registry, batcher, metrics)
    dataplane = DataPlane(settings, registry, lifecycle, batcher, metrics)
    api_keys = parse_api_keys(settings.load_api_keys())
    audit = AuditTrail(settings, metrics.registry)
    explainer = Explainer(dataplane, settings.explain_concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        configure_tensorflow(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        if settings.tune_malloc:
            tune_malloc()
        batcher.start()
        await anyio.to_thread.run_sync(audit.start)
        _log.info(
            "starting", extra={"model_store": str(settings.model_store), "auth": bool(api_keys)}
        )
        async with anyio.create_task_group() as tasks:
            # Load in the background: the process is live (and says why it is not ready)
            # while the model is verified, loaded and warmed up.
            tasks.start_soon(lifecycle.run)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                batcher.stop()
                explainer.close()
                with anyio.CancelScope(shield=True):  # the task group is being cancelled
                    await anyio.to_thread.run_sync(audit.stop)  # writes what is queued first
                _log.info("stopped")

    app = FastAPI(
        title="C-NMC leukaemia cell classifier",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by _offline_docs from local files, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.dataplane = dataplane
    app.state.audit = audit
    install_error_handlers(app)
    for router in (
        routes.health,
        routes.models,
        routes.classify,
        routes.operations,
        oip.oip,
        audit_api.router,
    ):
        app.include_router(router)
    app.state.explainer = explainer
    app.include_router(explain_routes.explain)
    mount_ui(app)
    _document_security(app, auth=bool(api_keys))
    _offline_docs(app)

    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(  # outermost
        RequestContextMiddleware,
        metrics=metrics,
        drain_limit=settings.max_upload_bytes,
        drain_timeout=settings.body_timeout_seconds,
    )
    return app


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files vendored in app/static/swagger-ui, so the page works on
    a network with no internet access (FastAPI's default loads it from a CDN). Swagger UI 5:
    FastAPI emits OpenAPI 3.1, which 4.x cannot render."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(SWAGGER_UI_DIR)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            # No spec validation by swagger.io's online validator (offline, and no leaks).
            swagger_ui_parameters={"validatorUrl": None},
        )


def _document_security(app: FastAPI, auth: bool) -> None:
    """Declare the API-key schemes in OpenAPI (enforcement is ApiKeyMiddleware): required
    on every operation except the open ones when keys are configured, optional otherwise."""
    default_openapi = app.openapi
    schemes: list[dict[str, list[str]]] = [{"ApiKeyHeader": []}, {"Bearer": []}]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            }
            schema["security"] = schemes if auth else [*schemes, {}]
            if auth:
                for path, operations in schema["paths"].items():
                    if is_open(path):
                        for operation in operations.values():
                            operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
