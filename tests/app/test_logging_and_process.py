"""JSON access logs, 500s in the error shape, and `python -m app` serving over a real socket."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest

from app.log import MAX_WARNING_LOG_LINES
from app.server import LimitedH11Protocol
from app.settings import Settings
from contract.imaging import MAX_NOTES
from tests.app.conftest import CNMC_PNGS, REPO, serve
from tests.app.images import cell_like, encode, exif_with_entries, with_damaged_exif
from tests.app.live_service import wait_ready

PNG = CNMC_PNGS[0].read_bytes()


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
    loaded = app.state.dataplane.lifecycle.served_default()

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
    # Ten images whose EXIF blocks each raise ~300 distinct warnings: the decoder forwards
    # MAX_NOTES new ones per image (the rest are counted in the image's result), and the
    # request logs at most MAX_WARNING_LOG_LINES of those, then one record counting the rest.
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
    assert summary["suppressed"] == 10 * MAX_NOTES - MAX_WARNING_LOG_LINES
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
        _wait_ready(process, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
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
    # The HTTP limits (app/server.py) are part of the one way to start the service.
    assert isinstance(seen["http"], type) and issubclass(seen["http"], LimitedH11Protocol)
    assert seen["h11_max_incomplete_event_size"] == 16 * 1024
    assert seen["limit_concurrency"] == 128 and seen["timeout_keep_alive"] == 5


def _start_server(store: Path, port: int, log: IO[bytes], **env: str) -> subprocess.Popen[bytes]:
    """`python -m app` on 127.0.0.1:port with the store and extra LEUK_* variables; its
    stderr goes to a file (a pipe nobody reads while the test runs would fill and block it)."""
    full_env = {
        **os.environ,
        "LEUK_MODEL_STORE": str(store),
        "LEUK_PORT": str(port),
        "LEUK_WARMUP_BATCH_SIZES": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def _wait_ready(process: subprocess.Popen[bytes], port: int) -> None:
    wait_ready(process, f"http://127.0.0.1:{port}")


def _json_records(stderr: bytes) -> list[dict[str, object]]:
    lines = stderr.decode().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_python_m_app_holds_the_http_edge(tiny_store: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = _start_server(
        tiny_store, port, log, LEUK_HEADER_TIMEOUT_SECONDS="1", LEUK_MAX_CONCURRENCY="3"
    )
    try:
        _wait_ready(process, port)
        # An unterminated header past LEUK_MAX_HEADER_BYTES (16 KiB): refused, not buffered.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000)
            answer = _read_until_closed(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head
        assert json.loads(body)["error"]["code"] == "bad_http_request"
        # A client that never finishes its request head is disconnected (head timeout 1 s;
        # the socket's own 20 s timeout fails the test instead).
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            assert _read_until_closed(sock) == b""
        # At the concurrency limit (3 open connections), a request gets a JSON 503.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                busy = http.get("/health/live")
            assert busy.status_code == 503
            assert busy.json()["error"]["code"] == "too_many_connections"
        finally:
            for sock in idle:
                sock.close()
        # Once those connections are gone, an ordinary request works again.
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while (status := http.get("/health/live").status_code) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        process.terminate()
        process.communicate(timeout=60)
        log.close()


def test_sigterm_under_load_loses_no_accepted_request(tiny_store: Path, tmp_path: Path) -> None:
    """Every request either completes (200) or is refused before the service accepted it
    (connection refused or closed unread, or a JSON 503); none is cut, and the process exits
    within the grace period."""
    port, grace, clients, per_client = _free_port(), 10, 8, 40
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    process = _start_server(
        tiny_store,
        port,
        log,
        LEUK_SHUTDOWN_GRACE_SECONDS=str(grace),
        # Batches wait for company under load: requests are surely in flight at SIGTERM.
        LEUK_MAX_BATCH_WAIT_MS="100",
        LEUK_MAX_BATCH_SIZE="64",
    )
    files = [("files", (f"{i}.png", PNG, "image/png")) for i in range(4)]
    completed = threading.Semaphore(0)
    sigterm_at: list[float] = []
    outcomes: list[tuple[str, float, float]] = []  # (outcome, sent at, answered at)

    def one_client() -> None:
        # A new connection per request: an idle keep-alive connection closed by the server
        # while a request is being written would be a client-side race, not a lost request.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(per_client):
                sent = time.monotonic()
                try:
                    response = http.post(
                        "/v1/classify", files=files, headers={"Connection": "close"}
                    )
                except httpx.ConnectError:
                    outcomes.append(("refused", sent, time.monotonic()))
                    return
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    outcomes.append((f"closed: {type(exc).__name__}", sent, time.monotonic()))
                    return
                if response.status_code == 200:
                    assert len(response.json()["results"]) == 4
                    outcomes.append(("200", sent, time.monotonic()))
                    completed.release()
                else:
                    code = response.json()["error"]["code"]
                    outcomes.append((f"{response.status_code} {code}", sent, time.monotonic()))
                    if response.status_code != 503:
                        return

    try:
        _wait_ready(process, port)
        threads = [threading.Thread(target=one_client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for _ in range(20):
            assert completed.acquire(timeout=60), "no load reached the service"
        sigterm_at.append(time.monotonic())
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=120)
        process.wait(timeout=grace + 30)
        exited_after = time.monotonic() - sigterm_at[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    records = _json_records(log_path.read_bytes())
    # uvicorn re-raises the SIGTERM it handled once shut down: that is the exit status.
    assert process.returncode == -signal.SIGTERM
    assert "Application shutdown complete." in [r["event"] for r in records]
    assert exited_after < grace + 5
    kinds = {kind for kind, _, _ in outcomes}
    assert kinds <= {"200", "refused", "503 shutting_down", "503 overloaded"} | {
        "closed: RemoteProtocolError",
        "closed: ReadError",
    }, kinds
    # Requests in flight at SIGTERM were finished, not dropped.
    assert any(k == "200" and s < sigterm_at[0] < a for k, s, a in outcomes)
    # Every request the service accepted was answered and reached its client: the access log
    # has exactly as many 200s as the clients received, and nothing but 200 and 503.
    access = [r for r in records if r["event"] == "request"]
    classify = [r for r in access if r["route"] == "/v1/classify"]
    assert {r["status"] for r in classify} <= {200, 503}
    assert sum(r["status"] == 200 for r in classify) == sum(k == "200" for k, _, _ in outcomes)
    assert not [r for r in records if r.get("exception")]


def test_an_early_answer_reaches_a_client_still_sending_its_body(tiny_store: Path) -> None:
    """401 (no key), 404 (unknown model) and 409 are answered before the upload is read; the
    service then reads and drops the rest, so a client writing a large body gets the JSON
    error, not a broken pipe (as a plain urllib client did before)."""
    import urllib.error
    import urllib.request

    from tests.app.live_service import running_service

    body = b"\0" * 4_000_000  # larger than the socket buffers on both sides
    with running_service(tiny_store, LEUK_API_KEYS="early-key") as url:
        for path, headers, status, code in (
            ("/v1/classify", {}, 401, "unauthorized"),
            ("/v1/models/nope/classify", {"X-API-Key": "early-key"}, 404, "model_not_found"),
        ):
            request = urllib.request.Request(
                url + path, data=body, method="POST",
                headers={"Content-Type": "image/png", **headers},
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=60)
            assert answer.value.code == status
            assert json.loads(answer.value.read())["error"]["code"] == code
