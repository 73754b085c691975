"""Replicas of the service behind a real load balancer (Debian's haproxy), all on 127.0.0.1.

The stand-in for a Kubernetes Service in front of several pods: haproxy health-checks each
replica on /health/ready (as the readiness probe gates endpoints) and retries a request that
a stopping replica refused or dropped on another one. tests/deploy/test_load_balancer.py
rolls the replicas under load with it; run as a module it measures throughput with wrk:

    python -m scripts.load_balancer --replicas 1 2 --concurrency 32 --duration 15
    python -m scripts.load_balancer --replicas 1 2 --cores-per-replica 1   # a core each
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import make_bodies, run_wrk, summarise
from bench.servers import HOST, ServerProcess, cpu_seconds, free_port

REPO = Path(__file__).resolve().parent.parent

HAPROXY_CONFIG = """\
global
    maxconn 512
    # Requests must fit in one buffer to be retried on another replica (L7 retries).
    tune.bufsize 131072

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout check 2s
    # A replica that refuses the connection or closes it without answering (it is stopping)
    # or answers 503 (not ready, queue full): try another one, up to 3 times.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response 503
    option http-buffer-request

frontend classify
    bind {host}:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
"""


def haproxy_path() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError("haproxy not found: apt-get install -y haproxy (Debian package)")
    return found


def replica(
    name: str, workdir: Path, model_store: Path, cores: list[int] | None = None
) -> ServerProcess:
    """`python -m app` on a free loopback port, serving the given store (the shared volume).

    With ``cores``, pinned to them (taskset) with TensorFlow's thread pools sized to match:
    a pod with its own CPUs, as on a node where each replica gets its request.
    """
    command = [sys.executable, "-m", "app"]
    env = {
        "LEUK_HOST": HOST,
        "LEUK_PORT": str(free_port()),
        "LEUK_MODEL_STORE": str(model_store),
        "LEUK_LOG_LEVEL": "WARNING",
        "LEUK_SHUTDOWN_GRACE_SECONDS": "25",
    }
    if cores:
        command = ["taskset", "-c", ",".join(map(str, cores)), *command]
        env["LEUK_TF_INTRA_OP_THREADS"] = env["LEUK_TF_INTER_OP_THREADS"] = str(len(cores))
    return ServerProcess(
        name=name, command=command, env=env, port=0, log_path=workdir / f"{name}.log"
    )


def with_port(server: ServerProcess) -> ServerProcess:
    server.port = int(server.env["LEUK_PORT"])
    return server


@dataclass
class LoadBalancer:
    """haproxy in front of the given replica ports, on its own free port."""

    replica_ports: list[int]
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        servers = "\n".join(
            f"    server replica{i} {HOST}:{port} check"
            for i, port in enumerate(self.replica_ports)
        )
        config = self.workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(host=HOST, port=self.port, servers=servers))
        subprocess.run([haproxy_path(), "-c", "-q", "-f", str(config)], check=True)
        log = (self.workdir / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [haproxy_path(), "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited; see {self.workdir / 'haproxy.log'}")
            if self.answers_ready():
                return
            time.sleep(0.2)
        raise TimeoutError("haproxy did not pass a ready replica through in time")

    def answers_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health/ready", timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def replicas_behind_haproxy(
    count: int,
    workdir: Path,
    model_store: Path = REPO / "model_store",
    cores_per_replica: int = 0,
) -> Iterator[tuple[list[ServerProcess], LoadBalancer]]:
    def cores(index: int) -> list[int] | None:
        first = index * cores_per_replica
        return list(range(first, first + cores_per_replica)) if cores_per_replica else None

    servers = [
        with_port(replica(f"replica{i}", workdir, model_store, cores(i))) for i in range(count)
    ]
    balancer = LoadBalancer([server.port for server in servers], workdir)
    try:
        # Started side by side, as a Deployment's pods are (start-up is mostly TensorFlow import).
        with ThreadPoolExecutor(max_workers=count) as starting:
            list(starting.map(lambda server: server.start(timeout_s=300), servers))
        balancer.start()
        yield servers, balancer
    finally:
        balancer.stop()
        for server in servers:
            server.stop()


def measure(
    replicas: int, concurrency: int, duration_s: float, workdir: Path, cores_per_replica: int = 0
) -> dict[str, Any]:
    """images/s through haproxy; with one replica also straight to it (haproxy's own cost)."""
    body = make_bodies(REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp", workdir)
    raw = body["raw"]
    results: dict[str, Any] = {
        "replicas": replicas,
        "concurrency": concurrency,
        "cores_per_replica": cores_per_replica or "unpinned",
    }
    with replicas_behind_haproxy(replicas, workdir, cores_per_replica=cores_per_replica) as (
        servers,
        balancer,
    ):
        time.sleep(2)  # every replica passes haproxy's health check (rise 2 x 500 ms)
        urls = {"haproxy": balancer.url}
        if replicas == 1:
            urls["direct"] = servers[0].base_url
        for label, url in urls.items():
            run_wrk(url + "/v1/classify", raw, concurrency, 3, 10**6)  # warm-up, not measured
            replicas_cpu = sum(server.cpu_seconds() for server in servers)
            haproxy_cpu = cpu_seconds([balancer.pid])
            wrk_result = run_wrk(url + "/v1/classify", raw, concurrency, duration_s, 10**6)
            replicas_cpu = sum(server.cpu_seconds() for server in servers) - replicas_cpu
            haproxy_cpu = cpu_seconds([balancer.pid]) - haproxy_cpu
            result = summarise(wrk_result, concurrency)
            images = result["ok"]
            # On a shared machine images/s depends on what else runs; images per CPU-second
            # of the replicas does not, and times the cores a deployment has gives its rate.
            results[label] = {
                "load_average_1m_after": round(os.getloadavg()[0], 1),
                "images_per_s": round(result["images_per_s"], 1),
                "replicas_cpu_cores": round(replicas_cpu / result["duration_s"], 2),
                "images_per_replica_cpu_second": round(images / replicas_cpu, 1),
                "haproxy_cpu_ms_per_image": round(1000 * haproxy_cpu / images, 2),
                "errors": result["errors"],
                "p50_ms": round(result["latency_ms"]["p50"], 1),
                "p99_ms": round(result["latency_ms"]["p99"], 1),
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="images/s through haproxy for N replicas")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument(
        "--cores-per-replica",
        type=int,
        default=0,
        help="pin replica i to cores [i*k, (i+1)*k) with TF threads k (0: unpinned)",
    )
    args = parser.parse_args(argv)
    for count in args.replicas:
        with tempfile.TemporaryDirectory(prefix="leuk-lb-") as scratch:
            numbers = measure(
                count, args.concurrency, args.duration, Path(scratch), args.cores_per_replica
            )
            print(json.dumps(numbers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
