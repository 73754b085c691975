"""Drive load with wrk (one light C thread) and the Lua script in bench/wrk/classify.lua."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).parent / "wrk" / "classify.lua"


@dataclass(frozen=True)
class RequestBody:
    """The exact bytes wrk sends on every request, and their Content-Type."""

    kind: str  # "raw", "multipart" or "kserve"
    path: Path
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()  # sent on every request besides Content-Type


def make_bodies(image: Path, workdir: Path, field: str = "files") -> dict[str, RequestBody]:
    """A raw ``image/bmp`` body, and the same image as one part of a multipart form."""
    data = image.read_bytes()
    raw = workdir / "body.bmp"
    raw.write_bytes(data)
    boundary = "bench" + uuid.uuid4().hex
    # A neutral file name: real C-NMC names carry subject ids, which the service must not log.
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="cell.bmp"\r\n'
        "Content-Type: image/bmp\r\n\r\n"
    ).encode()
    multipart = workdir / "body.multipart"
    multipart.write_bytes(head + data + f"\r\n--{boundary}--\r\n".encode())
    return {
        "raw": RequestBody("raw", raw, "image/bmp"),
        "multipart": RequestBody(
            "multipart", multipart, f"multipart/form-data; boundary={boundary}"
        ),
    }


KSERVE_INPUT = "image"  # the BYTES input of the PyTriton peer (bench/peers/pytriton_server.py)
KSERVE_OUTPUTS = ("probabilities", "label")


def make_kserve_body(data: bytes, workdir: Path) -> RequestBody:
    """The image as one element of a BYTES input, in the KServe v2 binary-data extension.

    Triton's HTTP front end takes a JSON inference header followed by the raw tensor bytes;
    the header's length goes in ``Inference-Header-Content-Length``, and a BYTES element is
    its length as a 4-byte little-endian integer followed by its bytes. The outputs are asked
    for as JSON (``binary_data: false``), so the answer is JSON as the service's is.
    """
    element = struct.pack("<I", len(data)) + data
    header = {
        "inputs": [
            {
                "name": KSERVE_INPUT,
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(element)},
            }
        ],
        "outputs": [
            {"name": name, "parameters": {"binary_data": False}} for name in KSERVE_OUTPUTS
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    path = workdir / "body.kserve"
    path.write_bytes(head + element)
    return RequestBody(
        "kserve",
        path,
        "application/octet-stream",
        (("Inference-Header-Content-Length", str(len(head))),),
    )


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "wrk not found: install it with `apt-get install -y wrk` (Debian package)."
        )
    return path


def run_wrk(
    url: str,
    body: RequestBody,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float = 30.0,
    cpu: int | None = None,
) -> dict[str, Any]:
    """One fixed-duration wrk run; returns its JSON summary plus wrk's own CPU use."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [
        wrk_path(),
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:.0f}s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    env = {
        **os.environ,
        "BENCH_BODY": str(body.path),
        "BENCH_CONTENT_TYPE": body.content_type,
        "BENCH_HEADERS": "\n".join(f"{name}: {value}" for name, value in body.headers),
        "BENCH_MAX_REQUESTS": str(max_requests),
        "BENCH_WRK_JSON": str(out),
    }
    t0 = time.monotonic()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Hard bound even if wrk misbehaves: its duration plus the request timeout plus slack.
    deadline = duration_s + timeout_s + 30
    try:
        stdout, stderr = process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    wall = time.monotonic() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu_s = (children1.ru_utime - children0.ru_utime) + (
        children1.ru_stime - children0.ru_stime
    )
    if process.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    result["wall_s"] = wall
    result["wrk_cpu_s"] = wrk_cpu_s
    result["stdout"] = stdout.decode()[-1500:]
    return result


def summarise(result: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """images/s, latency percentiles in ms and error count from one wrk result."""
    duration_s = result["duration_us"] / 1e6
    statuses = {str(k): int(v) for k, v in result["statuses"].items()}
    ok = statuses.get("200", 0)
    socket_errors = sum(result["errors"][k] for k in ("connect", "read", "write", "timeout"))
    percentiles = {k: v / 1000 for k, v in result["latency_us"]["percentiles"].items()}
    return {
        "duration_s": duration_s,
        "requests": result["requests"],
        "ok": ok,
        "errors": (result["requests"] - ok) + socket_errors,
        "statuses": statuses,
        "socket_errors": result["errors"],
        "wrk_cpu_s": result.get("wrk_cpu_s"),
        "images_per_s": ok / duration_s if duration_s else 0.0,
        "latency_ms": {
            "p50": percentiles["p50"],
            "p90": percentiles["p90"],
            "p95": percentiles["p95"],
            "p99": percentiles["p99"],
            "max": result["latency_us"]["max"] / 1000,
            "mean": result["latency_us"]["mean"] / 1000,
            # wrk records only requests that complete inside the window, so a server that starves
            # some connections looks better in its percentiles than it is. Little's law
            # (connections / throughput) gives the true mean time a request spends in the system.
            "littles_law_mean": 1000 * concurrency * duration_s / ok if ok else None,
        },
    }
