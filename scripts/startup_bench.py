"""Startup time, resident memory when ready, and one-client latency of ``python -m app``.

    .venv/bin/python -m scripts.startup_bench [--store model_store] [--requests 300]

Starts the service as a subprocess on 127.0.0.1, measures the time from process start to
the first 200 from /health/ready, reads VmRSS from /proc, then sends sequential 450x450 BMP
requests (one client, keep-alive) and prints p50/p99. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BMP = REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default=str(REPO / "model_store"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()

    port = free_port()
    env = {
        **os.environ,
        "LEUK_MODEL_STORE": args.store,
        "LEUK_PORT": str(port),
        "LEUK_HOST": "127.0.0.1",
        "LEUK_LOG_LEVEL": "WARNING",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    base = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=base, timeout=30.0) as client:
            ready_after = None
            while time.perf_counter() - start < args.timeout:
                if process.poll() is not None:
                    sys.exit(f"service exited with {process.returncode}")
                try:
                    if client.get("/health/ready").status_code == 200:
                        ready_after = time.perf_counter() - start
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            if ready_after is None:
                sys.exit("service did not become ready")
            rss_ready = rss_mib(process.pid)
            body = BMP.read_bytes()
            headers = {"content-type": "image/bmp"}
            for _ in range(10):  # connection and first-request warm-up
                client.post("/v1/classify", content=body, headers=headers).raise_for_status()
            latencies = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = client.post("/v1/classify", content=body, headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
            rss_after = rss_mib(process.pid)
            info = client.get("/health/ready").json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    ms = [round(v, 2) for v in (statistics.median(latencies), percentile(latencies, 99))]
    print(f"model: {info['model']} v{info['version']}  store: {args.store}")
    print(f"start -> ready: {ready_after:.2f} s")
    print(
        f"RSS when ready: {rss_ready:.0f} MiB (after {args.requests} requests: {rss_after:.0f} MiB)"
    )
    print(
        f"one client, {args.requests} x 450x450 BMP: p50 {ms[0]} ms, p99 {ms[1]} ms, "
        f"mean {statistics.fmean(latencies):.2f} ms"
    )


if __name__ == "__main__":
    main()
