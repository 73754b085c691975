"""Smoke-test a built image for real: run it, classify real C-NMC images over HTTP, stop it.

    python scripts/container_smoke_test.py leukaemia-cell-service:cpu [--results out.json]

The container runs with host networking and binds 127.0.0.1 on a free port, so every
connection stays on the loopback address. Checks, in order (any failure exits non-zero):

1. /health/ready answers 200 within --ready-timeout seconds of `docker run` (start-to-ready).
2. It runs as the image's non-root user.
3. A real C-NMC BMP, sent raw (Content-Type image/bmp), is classified: a label of the
   model's, probabilities over its labels summing to 1, label consistent with the threshold.
4. The same image plus a PNG in one multipart request (field ``files``): two results and a
   summary. A non-image body gets a 4xx with the service's error shape.
5. /metrics is Prometheus text and ``leuk_images_classified_total`` rose by the images sent.
6. Docker's HEALTHCHECK reports the container healthy.
7. `docker stop` (SIGTERM) while classify requests are in flight: every request that was
   accepted still gets its 200, the container exits with code 0, within --stop-timeout s.

Prints one line per check and writes the measured numbers as JSON to --results.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BMP = REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp"
PNG_GLOB = "tests/data/cnmc_real/**/*_hem.png"
CLASSIFIED_COUNTER = "leuk_images_classified_total"
HOST = "127.0.0.1"


class SmokeTestFailure(Exception):
    pass


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeTestFailure(message)


def report(message: str) -> None:
    print(f"[smoke] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def request(
    port: int,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> Response:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method=None)
    if content_type:
        req.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), dict(error.headers))


def multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, data, media_type in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{name}"\r\nContent-Type: {media_type}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def docker(*args: str, check_rc: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check_rc and done.returncode != 0:
        raise SmokeTestFailure(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def counter_total(metrics_text: str, name: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_ready(container: str, port: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if request(port, "/health/ready", timeout=2).status == 200:
                return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        if docker("inspect", "-f", "{{.State.Running}}", container) != "true":
            raise SmokeTestFailure("container exited before it was ready")
        time.sleep(0.2)
    raise SmokeTestFailure(f"/health/ready not 200 within {timeout:.0f}s")


def check_classification(result: dict[str, Any]) -> None:
    probabilities: dict[str, float] = result["probabilities"]
    check(set(probabilities) == {"all", "hem"}, f"labels {sorted(probabilities)}")
    check(math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-4), "probs do not sum to 1")
    expected = "all" if result["blast_probability"] >= result["threshold"] else "hem"
    check(result["label"] == expected, f"label {result['label']} vs threshold rule {expected}")
    check(
        math.isclose(result["blast_probability"], probabilities["all"], abs_tol=1e-6),
        "blast_probability is not P(all)",
    )


def classify_checks(port: int, numbers: dict[str, Any]) -> int:
    bmp = BMP.read_bytes()
    raw = request(port, "/v1/classify", bmp, "image/bmp")
    check(raw.status == 200, f"raw BMP classify: HTTP {raw.status} {raw.body[:300]!r}")
    body = raw.json()
    check(len(body["results"]) == 1, "raw BMP: expected one result")
    result = body["results"][0]
    check_classification(result)
    numbers["bmp_label"] = result["label"]
    numbers["bmp_blast_probability"] = round(result["blast_probability"], 4)
    numbers["bmp_out_of_distribution"] = result["out_of_distribution"]
    report(
        f"raw BMP ({BMP.name}, a real C-NMC 'all' cell): label={result['label']} "
        f"P(all)={result['blast_probability']:.3f} threshold={result['threshold']} "
        f"model={body['model']} v{body['version']} ood={result['out_of_distribution']}"
    )

    png = sorted(REPO.glob(PNG_GLOB))[0]
    form, content_type = multipart(
        [("a.bmp", bmp, "image/bmp"), ("b.png", png.read_bytes(), "image/png")]
    )
    multi = request(port, "/v1/classify", form, content_type)
    check(multi.status == 200, f"multipart classify: HTTP {multi.status} {multi.body[:300]!r}")
    results = multi.json()["results"]
    check(len(results) == 2, f"multipart: {len(results)} results for 2 files")
    for item in results:
        check_classification(item)
    check(multi.json().get("summary") is not None, "multipart: no summary for 2 images")
    report(f"multipart bmp+png: labels {[r['label'] for r in results]}, summary present")

    bad = request(port, "/v1/classify", b"this is not an image", "image/bmp")
    check(400 <= bad.status < 500, f"non-image body: HTTP {bad.status}, expected 4xx")
    check("code" in bad.json().get("error", {}), f"non-image body: error shape {bad.body!r}")
    report(f"non-image body: HTTP {bad.status} code={bad.json()['error']['code']}")
    return 3


def metrics_checks(port: int, before: float, sent: int) -> None:
    scraped = request(port, "/metrics")
    check(scraped.status == 200, f"/metrics: HTTP {scraped.status}")
    check("text/plain" in scraped.headers.get("content-type", ""), "/metrics: not text/plain")
    after = counter_total(scraped.body.decode(), CLASSIFIED_COUNTER)
    check(after - before >= sent, f"{CLASSIFIED_COUNTER}: {before} -> {after}, sent {sent}")
    report(f"/metrics: {CLASSIFIED_COUNTER} {before:.0f} -> {after:.0f}")


def wait_healthy(container: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = docker("inspect", "-f", "{{.State.Health.Status}}", container)
        if status == "healthy":
            return time.monotonic() - started
        check(status in ("starting", ""), f"HEALTHCHECK status {status}")
        time.sleep(1)
    raise SmokeTestFailure(f"HEALTHCHECK not healthy within {timeout:.0f}s")


def stop_with_requests_in_flight(
    container: str, port: int, stop_timeout: float, numbers: dict[str, Any]
) -> None:
    bmp = BMP.read_bytes()
    form, content_type = multipart([(f"{i}.bmp", bmp, "image/bmp") for i in range(32)])
    outcomes: list[str] = []

    def send() -> None:
        try:
            outcomes.append(str(request(port, "/v1/classify", form, content_type).status))
        except urllib.error.URLError as error:
            refused = isinstance(error.reason, ConnectionRefusedError)
            outcomes.append("refused" if refused else f"broken: {error.reason}")
        except OSError as error:
            outcomes.append(f"broken: {error}")

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    time.sleep(0.3)  # let them connect, then SIGTERM while they are being served
    started = time.monotonic()
    docker("stop", "--time", str(int(stop_timeout)), container)
    stop_seconds = time.monotonic() - started
    for sender in senders:
        sender.join(timeout=stop_timeout)
    exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", container)
    numbers["stop_seconds"] = round(stop_seconds, 2)
    numbers["in_flight_outcomes"] = outcomes
    report(f"docker stop: {stop_seconds:.1f}s, exit code {exit_code}, in-flight: {outcomes}")
    check(exit_code == "0", f"exit code {exit_code} after SIGTERM, expected 0")
    check(stop_seconds < stop_timeout, "not stopped before docker's SIGKILL")
    check(all(o in ("200", "refused") for o in outcomes), f"in-flight requests cut: {outcomes}")
    check("200" in outcomes, "no request was in flight during the stop; nothing was shown")


def run(args: argparse.Namespace) -> dict[str, Any]:
    numbers: dict[str, Any] = {"image": args.image}
    port = free_port()
    name = f"leuk-smoke-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    docker(
        "run", "--detach", "--name", name, "--network=host",
        "--env", f"LEUK_HOST={HOST}", "--env", f"LEUK_PORT={port}",
        *(arg for env in args.env for arg in ("--env", env)),
        *(arg for volume in args.volume for arg in ("--volume", volume)),
        args.image,
    )  # fmt: skip
    try:
        launch = time.monotonic() - started
        ready = wait_ready(name, port, args.ready_timeout) + launch
        numbers["start_to_ready_seconds"] = round(ready, 2)
        report(f"ready on {HOST}:{port} {ready:.1f}s after docker run")
        user = docker("exec", name, "id", "-u")
        check(user != "0", "container runs as root")
        report(f"runs as uid {user}")
        device_lines = [line for line in container_logs(name) if "compute device" in line]
        check(bool(device_lines), "no 'compute device' log line from the entrypoint")
        numbers["device_log"] = device_lines[0]
        report(f"device: {device_lines[0]}")
        metrics = request(port, "/metrics")
        before = counter_total(metrics.body.decode(), CLASSIFIED_COUNTER)
        sent = classify_checks(port, numbers)
        metrics_checks(port, before, sent)
        healthy = wait_healthy(name, args.health_timeout)
        report(f"HEALTHCHECK healthy (waited {healthy:.0f}s more)")
        stop_with_requests_in_flight(name, port, args.stop_timeout, numbers)
    except SmokeTestFailure:
        print("\n".join(container_logs(name)[-40:]), file=sys.stderr)
        raise
    finally:
        docker("rm", "--force", name, check_rc=False)
    return numbers


def container_logs(container: str) -> list[str]:
    """The container's stdout and stderr lines (the service logs JSON on stderr)."""
    done = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, check=False
    )
    return done.stdout.splitlines() + done.stderr.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--health-timeout", type=float, default=60.0)
    parser.add_argument("--stop-timeout", type=float, default=30.0)
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE")
    parser.add_argument(
        "--volume", action="append", default=[], help="extra docker run --volume, e.g. a store"
    )
    parser.add_argument("--results", type=Path, help="write the measured numbers here (JSON)")
    args = parser.parse_args(argv)
    try:
        numbers = run(args)
    except SmokeTestFailure as failure:
        report(f"FAILED: {failure}")
        return 1
    if args.results:
        args.results.write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    report("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
