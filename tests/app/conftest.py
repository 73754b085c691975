"""Fixtures for the service tests: tiny model stores, and the real app served over httpx."""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from app.log import LOGGER_NAME, JsonFormatter, capture_python_warnings
from app.main import create_app
from app.settings import Settings
from tests.app.tiny_model import export_tiny_model

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
CNMC_PNGS = sorted((DATA / "cnmc_real").rglob("*.png"))
CNMC_BMP = DATA / "cnmc_bmp" / "UID_51_101_1_all.bmp"
OOD_JPEGS = sorted((DATA / "ood").rglob("*.jpg"))
# Overridable to try the committed-model tests against another store (e.g. a dev export).
COMMITTED_STORE = Path(os.environ.get("APP_TEST_MODEL_STORE", REPO / "model_store"))


@pytest.fixture(autouse=True)
def python_warnings_as_in_the_service() -> None:
    """The service routes Python warnings through app.log once, at start-up; pytest swaps
    the warnings machinery for every test, so each test gets it installed again."""
    capture_python_warnings()


@pytest.fixture(scope="session", autouse=True)
def session_audit_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """For apps built by module- or session-scoped fixtures (before ``audit_data_dir``)."""
    data = tmp_path_factory.mktemp("session-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUK_DATA_DIR", str(data))
        yield data


@pytest.fixture(autouse=True)
def audit_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's audit database (SQLite, the default) goes to its own temp folder, never
    into the working directory."""
    data = tmp_path / "data"
    monkeypatch.setenv("LEUK_DATA_DIR", str(data))
    return data


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Store with model 'tiny' (versions 1, 2) and 'other' (version 1); DEFAULT = tiny.

    Never modified: tests that break a store copy it first (see ``tiny_store``).
    """
    store = tmp_path_factory.mktemp("template") / "model_store"
    export_tiny_model(store, "tiny", 1, seed=1)
    export_tiny_model(store, "tiny", 2, seed=2)
    export_tiny_model(store, "other", 1, seed=3, threshold=0.3)
    (store / "DEFAULT").write_text("tiny\n")
    return store


@pytest.fixture
def tiny_store(tiny_store_template: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the template store."""
    store = tmp_path / "model_store"
    shutil.copytree(tiny_store_template, store)
    return store


async def wait_until_settled(app: FastAPI, timeout: float = 120.0) -> None:
    """Wait until the lifespan's background load finished (ready or failed with a reason)."""
    lifecycle = app.state.dataplane.lifecycle
    deadline = time.monotonic() + timeout
    while lifecycle.status()[0] == "starting":
        if time.monotonic() > deadline:
            raise TimeoutError("model did not load")
        await anyio.sleep(0.02)


@asynccontextmanager
async def serve(settings: Settings, settle: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) behind an httpx client, through the ASGI interface."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            if settle:
                await wait_until_settled(app)
            yield client


ServeFactory = Callable[..., Any]


@pytest.fixture
def make_settings(tiny_store: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_store": tiny_store,
            "warmup_batch_sizes": [1],
            "store_poll_seconds": 0,  # tests that poll turn it on
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_settings()) as c:
        yield c


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Everything the service logs during the test, as written (JSON lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
