"""One benchmark run: the service as shipped, the naive baseline and the in-process ceiling.

    python -m bench                      # full run, writes bench/results/<UTC timestamp>/
    python -m bench --out bench/results/latest --sweep

See bench/README.md for what is measured and how to read the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.load import RequestBody, make_bodies, make_kserve_body, run_wrk, summarise
from bench.peers import PEERS
from bench.servers import HOST, ServerProcess, free_port, running
from contract.card import CARD_FILE, ModelCard

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp"


def resolve_default_model(store: Path) -> tuple[str, int, Path]:
    """The model the service serves by default, chosen by the service's own rule
    (``ModelRegistry.resolve``): the store's default model, its newest version whose card and
    files verify. Only TensorFlow's own load is left out (checked when the service starts)."""
    from app.errors import ServiceError
    from app.registry import ModelRegistry
    from app.store import ModelStore

    def verify_only(path: Path, card: ModelCard) -> NullRuntime:
        return NullRuntime()

    model_store = ModelStore(store)
    registry = ModelRegistry(model_store, loader=verify_only, warmup=lambda runtime: None)
    try:
        name = model_store.default_model(None)
        version = registry.resolve(name).version
    except ServiceError as exc:
        raise SystemExit(f"{store}: {exc.detail}") from exc
    return name, version, model_store.version_dir(name, version)


class NullRuntime:
    """Stands in for a loaded SavedModel where only the store's verification matters."""

    def predict(self, images: Any) -> Any:
        raise NotImplementedError("the benchmark's parent process runs no model")


def system_cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def training_processes() -> list[str]:
    result = subprocess.run(
        ["pgrep", "-af", "python -m training"], capture_output=True, text=True, check=False
    )
    return [line for line in result.stdout.splitlines() if "pgrep" not in line]


def parse_histograms(text: str | None) -> dict[str, float]:
    """``*_sum`` and ``*_count`` samples of a Prometheus text page, keyed by name+labels."""
    samples: dict[str, float] = {}
    for line in (text or "").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name.endswith(("_sum", "_count")) and not name.startswith(("python_", "process_")):
            try:
                samples[key] = float(value)
            except ValueError:
                continue
    return samples


def histogram_means(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per-histogram mean over the run (delta sum / delta count), for those that moved."""
    means: dict[str, Any] = {}
    for key, count_after in after.items():
        if not key.split("{", 1)[0].endswith("_count"):
            continue
        count = count_after - before.get(key, 0.0)
        sum_key = key.replace("_count", "_sum", 1)
        if count > 0 and sum_key in after:
            total = after[sum_key] - before.get(sum_key, 0.0)
            means[key.replace("_count", "", 1)] = {"count": count, "mean": total / count}
    return means


class Bench:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.bodies = make_bodies(Path(args.image), out)
        # Triton's KServe v2 request with the same image (the PyTriton peer)
        self.bodies["kserve"] = make_kserve_body(Path(args.image).read_bytes(), out)

    def load(self, server: ServerProcess, body: RequestBody, concurrency: int) -> dict[str, Any]:
        """Measure one point; repeat it (up to --retries) while other processes took CPU.

        The machine is shared: when something else used more than --max-other-cpu cores during
        the window, the point is measured again and the least disturbed attempt is kept. Every
        attempt's contention is recorded, so a number taken under contention says so.
        """
        attempts: list[dict[str, Any]] = []
        for _ in range(1 + self.args.retries):
            attempts.append(self._load_once(server, body, concurrency))
            if attempts[-1]["other_cpu_util"] <= self.args.max_other_cpu:
                break
        best = min(attempts, key=lambda a: float(a["other_cpu_util"]))
        best["attempts_other_cpu"] = [round(a["other_cpu_util"], 3) for a in attempts]
        return best

    def _load_once(
        self, server: ServerProcess, body: RequestBody, concurrency: int
    ) -> dict[str, Any]:
        """Warm up, then one measured wrk run with the server's CPU and the machine's CPU."""
        url = server.base_url + server.classify_path
        args = self.args
        if args.warmup > 0:
            run_wrk(url, body, concurrency, args.warmup, args.max_requests, cpu=args.wrk_cpu)
        drained_s = server.wait_idle()
        loadavg_before = _loadavg()
        metrics_before = parse_histograms(server.get_text("/metrics"))
        server_cpu0, machine_cpu0, t0 = server.cpu_seconds(), system_cpu_busy_s(), time.monotonic()
        raw = run_wrk(url, body, concurrency, args.duration, args.max_requests, cpu=args.wrk_cpu)
        wall = time.monotonic() - t0
        server_cpu = server.cpu_seconds() - server_cpu0
        machine_cpu = system_cpu_busy_s() - machine_cpu0
        metrics_after = parse_histograms(server.get_text("/metrics"))
        summary = summarise(raw, concurrency)
        wrk_cpu = summary["wrk_cpu_s"] or 0.0
        summary.update(
            drain_before_s=drained_s,
            drain_after_s=server.wait_idle(),
            target=server.name,
            body=body.kind,
            concurrency=concurrency,
            server_cpu_s=server_cpu,
            server_cpu_util=server_cpu / wall,  # 1.0 = one core busy; 2.0 = both cores here
            server_cpu_ms_per_image=1000 * server_cpu / summary["ok"] if summary["ok"] else None,
            wrk_cpu_util=wrk_cpu / wall,
            other_cpu_util=max(0.0, machine_cpu - server_cpu - wrk_cpu) / wall,
            server_histograms=histogram_means(metrics_before, metrics_after),
            loadavg_before=loadavg_before,
            loadavg_after=_loadavg(),
        )
        latency = summary["latency_ms"]
        print(
            f"  {server.name:<10} {body.kind:<9} c={concurrency:<3} "
            f"{summary['images_per_s']:8.1f} img/s  p50 {latency['p50']:8.1f} ms  "
            f"p99 {latency['p99']:8.1f} ms  errors {summary['errors']}  "
            f"server CPU {server_cpu / wall:.2f} cores  other {summary['other_cpu_util']:.2f}",
            flush=True,
        )
        return summary

    def serve_and_load(
        self, server: ServerProcess, plan: list[tuple[str, int]]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        runs = []
        with running(server):
            info = self._started(server, plan)
            for body_kind, concurrency in plan:
                runs.append(self.load(server, self.bodies[body_kind], concurrency))
            info["memory_end"] = server.memory()
        return info, runs

    def serve_interleaved(
        self, plans: list[tuple[ServerProcess, list[tuple[str, int]]]], rounds: list[int]
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
        """Start all servers, then load them in turns: every server's points at one
        concurrency, then the next concurrency. On a shared machine the contention then falls
        on all of them alike instead of on whichever ran while another job was busy.
        Returns the servers' info, the runs and the servers that failed to start."""
        infos: dict[str, dict[str, Any]] = {}
        failures: dict[str, str] = {}
        runs: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            started = []
            for server, plan in plans:
                stack.enter_context(running(server))
                try:
                    infos[server.name] = self._started(server, plan)
                except (RuntimeError, TimeoutError) as exc:
                    print(f"{server.name} FAILED: {exc}", flush=True)
                    failures[server.name] = str(exc)
                    server.stop()
                    continue
                started.append((server, plan))
            for turn in interleave([plan for _, plan in started], rounds):
                for (server, _), points in zip(started, turn, strict=True):
                    for body_kind, c in points:
                        for other, _ in started:  # backlog left by the previous point
                            other.wait_idle()
                        runs.append(self.load(server, self.bodies[body_kind], c))
            for server, _ in started:
                infos[server.name]["memory_end"] = server.memory()
        return infos, runs, failures

    def _started(self, server: ServerProcess, plan: list[tuple[str, int]]) -> dict[str, Any]:
        """Start the server; what it is and how it answers, before any load."""
        startup_s = server.start()
        print(f"{server.name}: ready in {startup_s:.1f} s", flush=True)
        idle = server.memory()
        models = _json_or_none(server.get_text("/v1/models"))
        return {
            "command": server.command,
            "env": dict(server.env),
            "startup_s": startup_s,
            "models": models,
            "batching": _batching_modes(models),
            "sample_answer": sample_answer(server, self.bodies[plan[0][0]]) if plan else None,
            "memory_ready": idle,
        }


def service_server(
    out: Path,
    store: Path,
    env: dict[str, str] | None = None,
    name: str = "service",
    command: list[str] | None = None,
) -> ServerProcess:
    port = free_port()
    base_env = {
        "LEUK_HOST": HOST,
        "LEUK_PORT": str(port),
        "LEUK_MODEL_STORE": str(store),
        "LEUK_DATA_DIR": str(out / f"data-{name}"),  # the audit trail's SQLite database
    }
    if command is None:
        if (REPO / "app" / "__main__.py").exists():
            command = [sys.executable, "-m", "app"]
        else:
            command = _uvicorn("app.main:create_app", port)
    else:
        command = [part.replace("{port}", str(port)) for part in command]
    return ServerProcess(name, command, {**base_env, **(env or {})}, port, out / f"{name}.log")


Point = tuple[str, int]  # (body kind, concurrency)


def interleave(plans: list[list[Point]], rounds: list[int]) -> list[list[list[Point]]]:
    """Split each server's plan into turns, one per entry of ``rounds`` (concurrencies, in
    order, repeats allowed): in each turn every server runs its points at that concurrency,
    a repeated concurrency sharing them out evenly (``--concurrency 64 64`` gives each server
    two turns at 64 with one raw and one multipart point each, not both raw ones first).
    Points at concurrencies not in ``rounds`` come in a last turn."""
    turns: list[list[list[Point]]] = [[[] for _ in plans] for _ in rounds]
    leftover: list[list[Point]] = [[] for _ in plans]
    for index, plan in enumerate(plans):
        for c in dict.fromkeys(c for _, c in plan):
            points = [point for point in plan if point[1] == c]
            mine = [turn for turn, rc in enumerate(rounds) if rc == c]
            if not mine:
                leftover[index] += points
                continue
            # the k-th repeat of a point goes to the k-th turn at its concurrency
            seen: dict[str, int] = {}
            for body_kind, _ in points:
                k = seen.get(body_kind, 0)
                seen[body_kind] = k + 1
                turns[mine[min(k, len(mine) - 1)]][index].append((body_kind, c))
    if any(leftover):
        turns.append(leftover)
    return turns


def sample_answer(server: ServerProcess, body: RequestBody) -> dict[str, Any]:
    """One request before the load: its status and JSON answer, to show every server answers
    the same image with the same label (wrk counts statuses only)."""
    request = urllib.request.Request(
        server.base_url + server.classify_path,
        data=body.path.read_bytes(),
        headers={"Content-Type": body.content_type, **dict(body.headers)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return {"status": None, "error": str(exc)}
    return {"status": status, "body": _json_or_none(text) or text[:500]}


def peer_server(out: Path, name: str, model_dir: Path) -> ServerProcess:
    """A peer framework (bench/peers) from its own venv, serving the same model version."""
    peer = PEERS[name]
    port = free_port()
    command, env = peer.command(peer.python, port, free_port)
    return ServerProcess(
        name,
        command,
        {**env, "PEER_MODEL_DIR": str(model_dir)},
        port,
        out / f"{name}.log",
        ready_path=peer.ready_path,
        classify_path=peer.classify_path,
    )


def _uvicorn(factory: str, port: int) -> list[str]:
    # Access logs off for the benchmark-only apps: their cost would only flatter the service.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def naive_server(out: Path, model_dir: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        "naive",
        _uvicorn("bench.naive_app:create_app", port),
        {"NAIVE_MODEL_DIR": str(model_dir)},
        port,
        out / "naive.log",
    )


def floor_server(out: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        "http-floor",
        _uvicorn("bench.http_floor_app:create_app", port),
        {},
        port,
        out / "http-floor.log",
    )


def run_ceiling(args: argparse.Namespace, model_dir: Path, out: Path) -> dict[str, Any]:
    path = out / "ceiling.json"
    command = [
        sys.executable,
        "-m",
        "bench.ceiling",
        "--model-dir",
        str(model_dir),
        "--image",
        str(args.image),
        "--out",
        str(path),
        "--seconds",
        str(args.ceiling_seconds),
    ]
    if not args.no_tflite:
        command.append("--tflite")
    card_path = model_dir / CARD_FILE
    if card_path.exists():  # measure the standalone resize at the size the model resizes to
        size = ModelCard.model_validate_json(card_path.read_text()).input.model_input_size
        command += ["--input-size", *(str(side) for side in size)]
    attempts: list[dict[str, Any]] = []
    for _ in range(1 + args.retries):
        print("ceiling: in-process measurements ...", flush=True)
        machine0, t0 = system_cpu_busy_s(), time.monotonic()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with (out / "ceiling.log").open("wb") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
        attempt: dict[str, Any] = json.loads(path.read_text())
        wall = time.monotonic() - t0
        attempt["other_cpu_util"] = max(0.0, system_cpu_busy_s() - machine0 - own) / wall
        attempts.append(attempt)
        print(f"  other processes used {attempt['other_cpu_util']:.2f} cores", flush=True)
        if attempt["other_cpu_util"] <= args.max_other_cpu:
            break
    result = min(attempts, key=lambda a: float(a["other_cpu_util"]))
    result["attempts_other_cpu"] = [round(a["other_cpu_util"], 3) for a in attempts]
    path.write_text(json.dumps(result, indent=2))
    sig = result["signature"]
    print(
        f"  ceiling {sig['best_images_per_s']:.1f} img/s at batch {sig['best_batch']}; "
        f"batch-1 call {sig['by_batch']['1']['median_ms']:.2f} ms; "
        f"keras predict {result['keras_predict_batch1']['median_ms']:.1f} ms",
        flush=True,
    )
    return result


# Settings tried by --sweep: each is one service restart with these environment variables.
STACK = {"LEUK_EXACT_BATCHING": "false"}
SWEEP_VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("defaults", {}),
    ("one image per call (exact_batching on)", {"LEUK_EXACT_BATCHING": "true"}),
    ("stacked, batch 8", {**STACK, "LEUK_MAX_BATCH_SIZE": "8"}),
    ("stacked, batch 32", {**STACK, "LEUK_MAX_BATCH_SIZE": "32"}),
    ("stacked, batch 64", {**STACK, "LEUK_MAX_BATCH_SIZE": "64"}),
    ("stacked, wait 0 ms", {**STACK, "LEUK_MAX_BATCH_WAIT_MS": "0"}),
    ("stacked, wait 10 ms", {**STACK, "LEUK_MAX_BATCH_WAIT_MS": "10"}),
    ("inference workers 1", {"LEUK_INFERENCE_WORKERS": "1"}),
    ("inference workers 4", {"LEUK_INFERENCE_WORKERS": "4"}),
    ("decode threads 2", {"LEUK_DECODE_THREADS": "2"}),
    ("intra 1 inter 1", {"LEUK_TF_INTRA_OP_THREADS": "1", "LEUK_TF_INTER_OP_THREADS": "1"}),
    ("intra 2 inter 1", {"LEUK_TF_INTRA_OP_THREADS": "2", "LEUK_TF_INTER_OP_THREADS": "1"}),
    ("oneDNN off", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
]
# Two server processes, each with its own TensorFlow and batcher (same flags as `python -m app`).
SWEEP_WORKERS_2 = (
    "2 uvicorn workers",
    [
        "{python}",
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--workers",
        "2",
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ],
)


def run_sweep(bench: Bench, store: Path, out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    plan = [("raw", c) for c in bench.args.sweep_concurrency]
    variants: list[tuple[str, dict[str, str], list[str] | None]] = [
        (label, env, None) for label, env in SWEEP_VARIANTS
    ]
    workers_label, workers_command = SWEEP_WORKERS_2
    workers_command = [p.replace("{python}", sys.executable) for p in workers_command]
    variants.append((workers_label, {}, workers_command))
    if bench.args.sweep_only:
        variants = [v for v in variants if v[0] in bench.args.sweep_only]
    for label, env, command in variants:
        print(f"sweep: {label}", flush=True)
        server = service_server(out, store, env, name="service", command=command)
        server.log_path = out / f"sweep-{label.replace(' ', '_')}.log"
        try:
            info, runs = bench.serve_and_load(server, plan)
        except (RuntimeError, TimeoutError) as exc:
            rows.append({"variant": label, "env": env, "error": str(exc)})
            continue
        rows.append(
            {
                "variant": label,
                "env": env,
                "batching": info["batching"],
                "command": info["command"],
                "memory_end": info["memory_end"],
                "runs": runs,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark the service against the naive way and the model's own limit."
    )
    parser.add_argument(
        "--out", type=Path, help="results folder (default bench/results/<UTC timestamp>)"
    )
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured load")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load first"
    )
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap per wrk run")
    parser.add_argument("--wrk-cpu", type=int, default=None, help="pin wrk to this core (taskset)")
    parser.add_argument("--ceiling-seconds", type=float, default=1.5)
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.25,
        help="cores other processes may use during a point before it is measured again",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measurements per point")
    parser.add_argument("--no-tflite", action="store_true")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["service", "naive", "floor", "ceiling", "multipart"],
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=[],
        choices=list(PEERS),
        help="also load these frameworks serving the same model (bench/peers/README.md)",
    )
    parser.add_argument("--sweep", action="store_true", help="also try service settings (slow)")
    parser.add_argument("--sweep-concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--sweep-only", nargs="+", default=None, metavar="LABEL", help="sweep variants to run"
    )
    args = parser.parse_args(argv)

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or REPO / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    store = args.model_store.resolve()
    name, version, model_dir = resolve_default_model(store)
    print(f"model: {name} v{version} ({model_dir})", flush=True)

    started = time.monotonic()
    bench = Bench(args, out)
    results: dict[str, Any] = {
        "meta": {
            "started_utc": stamp,
            "git_commit": _git_commit(),
            "command": " ".join(
                [Path(sys.executable).name, "-m", "bench", *(argv or sys.argv[1:])]
            ),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "platform": platform.platform(),
            },
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
            "training_processes_before": training_processes(),
            "wrk": _wrk_version(),
            "wrk_threads": 1,
            "wrk_cpu_pin": args.wrk_cpu,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "image": str(Path(args.image).resolve().relative_to(REPO))
            if Path(args.image).resolve().is_relative_to(REPO)
            else str(args.image),
            "model": {"name": name, "version": version, "dir": str(model_dir)},
            "peers": list(args.peers),
        },
        "servers": {},
        "runs": [],
    }

    def step(label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
            print(f"{label} FAILED: {exc}", flush=True)
            results.setdefault("failures", {})[label] = str(exc)

    if "ceiling" not in args.skip:
        step("ceiling", lambda: results.__setitem__("ceiling", run_ceiling(args, model_dir, out)))

    def serve(server: ServerProcess, plan: list[tuple[str, int]]) -> None:
        info, runs = bench.serve_and_load(server, plan)
        results["servers"][server.name] = info
        results["runs"] += runs

    service_plan = [("raw", c) for c in args.concurrency]
    if "multipart" not in args.skip:
        # BentoML and LitServe take multipart only: compare them with the service's multipart.
        multipart = args.concurrency if args.peers else (1, 32)
        service_plan += [("multipart", c) for c in multipart]
    if "service" not in args.skip and not args.peers:
        step("service", lambda: serve(service_server(out, store), service_plan))
    if "naive" not in args.skip:
        step(
            "naive",
            lambda: serve(naive_server(out, model_dir), [("raw", c) for c in args.concurrency]),
        )
    if "floor" not in args.skip:
        step(
            "http-floor",
            lambda: serve(floor_server(out), [("raw", 1), ("raw", 32), ("multipart", 32)]),
        )
    if args.peers:
        # The service and the peers run side by side and are loaded in turns (serve_interleaved).
        group = [] if "service" in args.skip else [(service_server(out, store), service_plan)]
        for name in args.peers:
            if not PEERS[name].installed():
                message = (
                    f"venv {PEERS[name].venv} missing: run `python -m bench.peers setup {name}`"
                )
                print(f"{name}: skipped, {message}", flush=True)
                results.setdefault("skipped", {})[name] = message
                continue
            plan = [(PEERS[name].body_kind, c) for c in args.concurrency]
            group.append((peer_server(out, name, model_dir), plan))
        infos, runs, failed = bench.serve_interleaved(group, args.concurrency)
        results["servers"].update(infos)
        results["runs"] += runs
        if failed:
            results.setdefault("failures", {}).update(failed)
    if args.sweep:
        results["sweep"] = run_sweep(bench, store, out)

    results["meta"]["training_processes_after"] = training_processes()
    results["meta"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    results["meta"]["elapsed_s"] = time.monotonic() - started
    results["comparison"] = report.compare(results)
    if args.peers:
        results["peer_comparison"] = report.compare_peers(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report.markdown(results))
    report.plot(results, out / "results.png")
    for body in bench.bodies.values():
        body.path.unlink(missing_ok=True)
    print(
        f"wrote {out}/results.json, results.md, results.png in {results['meta']['elapsed_s']:.0f} s"
    )


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _batching_modes(models: Any) -> list[str]:
    """The service's batching mode per loaded version ("stacked" or "per_image")."""
    modes: list[str] = []
    if isinstance(models, dict):
        for model in models.get("models", {}).values():
            versions = model.get("versions", {}).values()
            modes += [str(v["batching"]) for v in versions if v.get("batching")]
    return modes


def _git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() or "unknown"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _wrk_version() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        return "missing"
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    words = (result.stdout or result.stderr).split()
    return f"wrk {words[1]}" if len(words) > 1 else "wrk"
