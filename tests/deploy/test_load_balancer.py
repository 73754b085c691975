"""Two replicas behind haproxy serve a steady load with zero failed requests while each in
turn gets SIGTERM and is started again (a rolling update of the Deployment, minus the
cluster). Real processes (`python -m app` on the committed model store), real haproxy, real
HTTP on 127.0.0.1 only. Skipped where haproxy is not installed (.ci/run installs it)."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bench.servers import ServerProcess
from scripts.load_balancer import replicas_behind_haproxy

REPO = Path(__file__).resolve().parents[2]
PNG = sorted((REPO / "tests" / "data" / "cnmc_real").glob("**/*_all.png"))[0]

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None and shutil.which("haproxy", path="/usr/sbin") is None,
    reason="haproxy not installed (apt-get install -y haproxy)",
)


def _roll(server: ServerProcess, outcomes: Counter[str], settle_s: float) -> None:
    """SIGTERM one replica, wait for it to exit, start it again, let haproxy see it up."""
    assert server.process is not None
    before, started = sum(outcomes.values()), time.monotonic()
    server.stop()
    # uvicorn re-raises SIGTERM once its graceful shutdown is done (-15 here; 0 as a
    # container's PID 1, which ignores it); -9 would be ServerProcess.stop's kill.
    assert server.process.returncode in (0, -signal.SIGTERM)
    server.start(timeout_s=180)
    time.sleep(settle_s)  # haproxy marks it up after 2 passing checks, 500 ms apart
    took = time.monotonic() - started
    print(f"{server.name}: stopped, restarted and back in rotation in {took:.1f} s")
    assert sum(outcomes.values()) > before, "no request completed during the roll"


def test_rolling_restart_behind_haproxy_loses_no_request(tmp_path: Path) -> None:
    body = PNG.read_bytes()
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    response = http.post(url, content=body, headers={"Content-Type": "image/png"})
                    ok = response.status_code == 200 and response.json()["results"][0]["label"]
                    outcomes["200" if ok else f"HTTP {response.status_code}"] += 1
                except httpx.HTTPError as error:
                    outcomes[type(error).__name__] += 1

    with replicas_behind_haproxy(2, tmp_path) as (servers, balancer):
        clients = [
            threading.Thread(target=client, args=(balancer.url + "/v1/classify",)) for _ in range(6)
        ]
        for thread in clients:
            thread.start()
        try:
            time.sleep(1.0)
            for server in servers:
                _roll(server, outcomes, settle_s=1.5)
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=90)
    print(f"outcomes during the rolling restart: {dict(outcomes)}")
    assert outcomes["200"] >= 50, outcomes
    assert set(outcomes) == {"200"}, f"failed requests during the rolling restart: {outcomes}"
