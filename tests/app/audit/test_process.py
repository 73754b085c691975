"""``python -m app`` stopped by SIGTERM under load: every request answered 200 has its
audit record (the record is committed before the response; the writer drains on shutdown)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from app.audit.store import AuditStore, RecordFilter
from tests.app.conftest import CNMC_PNGS, REPO

PNG = CNMC_PNGS[0].read_bytes()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_during_load_loses_no_record(tiny_store: Path, audit_data_dir: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LEUK_MODEL_STORE": str(tiny_store),
        "LEUK_PORT": str(port),
        "LEUK_WARMUP_BATCH_SIZES": "1",
        "LEUK_DATA_DIR": str(audit_data_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for i in range(10_000):
                request_id = f"c{n}-{i}"
                try:
                    response = http.post(
                        "/v1/classify",
                        content=PNG,
                        headers={"content-type": "image/png", "x-request-id": request_id},
                    )
                except httpx.TransportError:
                    return  # the server has stopped listening
                if response.status_code == 200:
                    answered.append(request_id)
                if stop.is_set() and i > 2:
                    return

    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "server exited"
            try:
                if httpx.get(base + "/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.1)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        while len(answered) < 16:  # load is flowing
            assert time.monotonic() < deadline, "no answers"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        stop.set()
        for thread in threads:
            thread.join(90)
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        print(f"stopped {time.monotonic() - signalled:.1f} s after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    store = AuditStore(f"sqlite:///{audit_data_dir / 'audit.sqlite3'}")
    try:
        recorded = {
            r["request_id"] for r in store.query(RecordFilter(kind="request", status=200), 100_000)
        }
        assert store.verify().ok
    finally:
        store.close()
    assert len(answered) >= 16
    assert set(answered) <= recorded
