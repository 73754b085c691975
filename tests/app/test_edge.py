"""The HTTP edge in-process: clients that leave, stalled bodies, requests cut at shutdown,
multipart without a boundary, the OpenAPI body schema.

Disconnects and stalls cannot be produced through httpx's ASGI transport, so these tests
call the real app (lifespan, middleware, routes, batcher) as an ASGI callable with a
``receive`` they control.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from numpy.typing import NDArray

from app.settings import Settings
from tests.app.conftest import CNMC_PNGS, serve

pytestmark = pytest.mark.anyio

PNG = CNMC_PNGS[0].read_bytes()
BOUNDARY = "edge-test-boundary"


class GatedRuntime:
    """Wraps the real runtime; holds the first call until ``release`` and counts images run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.images_run = 0
        self.first_call = threading.Event()
        self.release = threading.Event()

    def predict(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.images_run += len(images)
        self.first_call.set()
        assert self.release.wait(60), "test never released the model"
        return self.inner.predict(images)  # type: ignore[no-any-return]


def access_entries(stream: io.StringIO) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in entries if e.get("event") == "request"]


def multipart(count: int) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + PNG
        + b"\r\n"
        for i in range(count)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class AsgiCall:
    """One request to the app as an ASGI callable; the test decides when the client leaves."""

    def __init__(self, body: bytes, content_type: str, stall_after_first_chunk: bool = False):
        self.chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
        self.stall = stall_after_first_chunk
        self.content_type = content_type
        self.leave = anyio.Event()
        self.sent: list[dict[str, Any]] = []

    def scope(self) -> dict[str, Any]:
        headers = [(b"content-type", self.content_type.encode()), (b"host", b"test")]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/classify",
            "raw_path": b"/v1/classify",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 80),
        }

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            chunk = self.chunks.pop(0)
            more = bool(self.chunks)
            if more and self.stall:
                self.chunks.clear()  # the rest never arrives
            return {"type": "http.request", "body": chunk, "more_body": more}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def __call__(self, app: FastAPI) -> None:
        await app(self.scope(), self.receive, self.send)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def test_images_of_a_client_that_left_are_never_run(
    make_settings: Callable[..., Settings], log_stream: io.StringIO
) -> None:
    settings = make_settings(inference_workers=1, max_batch_wait_ms=0)
    async with serve(settings) as client:
        app: FastAPI = client.app  # type: ignore[attr-defined]
        loaded = app.state.dataplane.lifecycle.served_default()
        gated = GatedRuntime(loaded.runtime)
        loaded.runtime = gated
        batcher = app.state.dataplane.batcher
        async with anyio.create_task_group() as tasks:
            first: list[httpx.Response] = []

            async def post_first() -> None:
                headers = {"content-type": "image/png"}
                first.append(await client.post("/v1/classify", content=PNG, headers=headers))

            tasks.start_soon(post_first)
            await wait_for(gated.first_call.is_set)  # the only worker is busy with it
            leaver = AsgiCall(multipart(3), f"multipart/form-data; boundary={BOUNDARY}")
            tasks.start_soon(leaver, app)
            await wait_for(lambda: batcher.queue_depth() == 3)
            leaver.leave.set()
            await wait_for(lambda: leaver.status is not None)
            gated.release.set()
        assert first[0].status_code == 200
        after = await client.post(
            "/v1/classify", content=PNG, headers={"content-type": "image/png"}
        )
        assert after.status_code == 200
        assert gated.images_run == 2  # the first request and the last: none of the 3 queued
        assert batcher.queue_depth() == 0
    assert leaver.status == 499
    (entry,) = [e for e in access_entries(log_stream) if e["status"] == 499]
    assert entry["outcome"] == "client_closed" and entry["n_images"] == 3


async def test_a_stalled_body_gets_408(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(body_timeout_seconds=0.3)) as client:
        app: FastAPI = client.app  # type: ignore[attr-defined]
        stalled = AsgiCall(PNG, "image/png", stall_after_first_chunk=True)
        with anyio.fail_after(30):
            await stalled(app)
    assert stalled.status == 408
    assert stalled.json()["error"]["code"] == "body_timeout"


async def test_request_cut_at_shutdown_gets_json_503(
    make_settings: Callable[..., Settings],
) -> None:
    """What uvicorn does when the grace period ends: cancel the request's task."""
    settings = make_settings(inference_workers=1, max_batch_wait_ms=0)
    async with serve(settings) as client:
        app: FastAPI = client.app  # type: ignore[attr-defined]
        loaded = app.state.dataplane.lifecycle.served_default()
        gated = GatedRuntime(loaded.runtime)
        loaded.runtime = gated
        cut = AsgiCall(PNG, "image/png")
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(cut, app)
                await wait_for(gated.first_call.is_set)
                tasks.cancel_scope.cancel()
        finally:
            gated.release.set()
    assert cut.status == 503
    assert cut.json()["error"]["code"] == "shutting_down"


async def test_multipart_without_boundary_is_invalid_multipart(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/classify", content=multipart(1), headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_multipart"


async def test_openapi_requires_at_least_one_file(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    files = body["multipart/form-data"]["schema"]["properties"]["files"]
    assert files["minItems"] == 1
    assert "408" in spec["paths"]["/v1/classify"]["post"]["responses"]
