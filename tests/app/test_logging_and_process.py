"""JSON access logs, 500s in the error shape, and `python -m app` serving over a real socket."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.logging import LOGGER_NAME, MAX_NOTES, MAX_WARNING_LOG_LINES, JsonFormatter
from app.settings import Settings
from tests.app.conftest import CNMC_PNGS, REPO, serve
from tests.app.images import cell_like, encode, exif_with_entries, with_damaged_exif

PNG = CNMC_PNGS[0].read_bytes()


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


@pytest.mark.anyio
async def test_access_log_is_json_with_request_id_and_no_image_data(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    secret_name = "UID_51_patient-Jane-Doe.png"
    await client.post(
        "/v1/classify",
        files={"files": (secret_name, PNG, "image/png")},
        headers={"x-request-id": "log-test-1"},
    )
    await client.post("/v1/classify", content=b"junk", headers={"content-type": "image/png"})
    text = log_stream.getvalue()
    entries = [json.loads(line) for line in text.splitlines()]
    access = [e for e in entries if e.get("event") == "request"]
    ok = next(e for e in access if e.get("request_id") == "log-test-1")
    assert ok["route"] == "/v1/classify" and ok["status"] == 200 and ok["outcome"] == "ok"
    assert ok["latency_ms"] > 0 and ok["n_images"] == 1
    bad = access[-1]
    assert bad["status"] == 422 and bad["outcome"] == "invalid_image"
    assert "Jane" not in text and "patient" not in text
    assert PNG[:64].hex() not in text and "junk" not in text


@pytest.mark.anyio
async def test_unexpected_failure_is_a_500_in_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    app = client.app  # type: ignore[attr-defined]
    loaded = app.state.dataplane.served_default()

    class Exploding:
        def predict(self, images: object) -> object:
            raise RuntimeError("boom")

    original = loaded.runtime
    loaded.runtime = Exploding()
    try:
        response = await client.post(
            "/v1/classify",
            content=PNG,
            headers={"content-type": "image/png", "x-request-id": "r500"},
        )
    finally:
        loaded.runtime = original
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "detail": "Internal server error.",
            "request_id": "r500",
        }
    }
    assert response.headers["x-request-id"] == "r500"
    again = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
    assert again.status_code == 200


@pytest.mark.anyio
async def test_decoder_warnings_are_rate_limited_per_request(
    make_settings: Callable[..., Settings], log_stream: io.StringIO
) -> None:
    # Ten images whose EXIF blocks each raise ~300 distinct warnings: the request logs at
    # most MAX_WARNING_LOG_LINES of them and one record counting the rest.
    damaged = encode(cell_like(4), "PNG", exif=exif_with_entries(400))
    files = [("files", (f"{i}.png", damaged, "image/png")) for i in range(10)]
    async with serve(make_settings()) as client:
        response = await client.post("/v1/classify", files=files)
    assert response.status_code == 200
    assert all(len(r["warnings"]) == MAX_NOTES + 1 for r in response.json()["results"])
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    logged = [r for r in records if r["event"] == "python warning"]
    (summary,) = [r for r in records if r["event"] == "python warnings suppressed"]
    assert len(logged) == MAX_WARNING_LOG_LINES
    assert summary["suppressed"] > 2500
    assert summary["request_id"] == response.headers["x-request-id"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_python_m_app_serves_on_localhost(tiny_store: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LEUK_MODEL_STORE": str(tiny_store),
        "LEUK_PORT": str(port),
        "LEUK_WARMUP_BATCH_SIZES": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while True:
                assert process.poll() is None, "server exited"
                try:
                    if http.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "not ready in time"
                time.sleep(0.1)
            response = http.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
            assert response.status_code == 200
            assert response.json()["model"] == "tiny"
            damaged = http.post(
                "/v1/classify",
                content=with_damaged_exif(cell_like(3)),
                headers={"content-type": "image/png", "x-request-id": "damaged-1"},
            )
            assert damaged.status_code == 200
            assert damaged.json()["results"][0]["warnings"][0].startswith("damaged_file: ")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    lines = stderr.decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    events = [record["event"] for record in records]
    assert "ready" in events and "request" in events
    # Pillow's warning about the damaged file is a JSON record tied to its request, not text.
    assert not [line for line in lines if "UserWarning" in line and not line.startswith("{")]
    (warning,) = [r for r in records if r["event"] == "python warning"]
    assert warning["request_id"] == "damaged-1" and warning["category"] == "UserWarning"
    assert warning["warning"] == "Tag data larger than file. Skipping tag 270"


def test_python_m_app_passes_the_graceful_shutdown_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    import app.__main__ as entry

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(kw))
    monkeypatch.setenv("LEUK_SHUTDOWN_GRACE_SECONDS", "7")
    entry.main()
    assert seen["timeout_graceful_shutdown"] == 7
    assert seen["factory"] is True
