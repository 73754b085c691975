"""``python -m bench.audit``: what the audit trail costs, and whether it loses records.

In one run, on the same machine, against ``python -m app`` serving the committed model:

1. **throughput at c=32** (wrk, the raw BMP body, as the main benchmark) with the audit
   trail off, on SQLite (the default) and on PostgreSQL (a throwaway local server), in
   rounds that alternate the three so that drift on a shared machine hits each alike;
2. **records lost**: after each load, the service's own count of classify requests answered
   200 (``leuk_http_requests_total``) against the request records stored with status 200;
3. **SIGTERM during load**: a Python client keeps 32 requests in flight, the service gets
   SIGTERM mid-load, and every request that was answered 200 must have its record;
4. **chain verification time** for 100 000 records, and **database size per 1 000 images**
   (SQLite file after a checkpoint; PostgreSQL table + indexes).

    python -m bench.audit --out bench/results/audit       # about 4 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.audit.store import AuditStore, utc_timestamp
from bench.load import make_bodies, run_wrk, summarise
from bench.postgres import PostgresServer, pg_bin
from bench.run import histogram_means, parse_histograms, service_server
from bench.servers import running

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp"
CLASSIFY = "/v1/classify"


def served_ok(metrics_text: str) -> int:
    """Classify requests the service answered 200, by its own Prometheus counter."""
    total = 0
    for line in metrics_text.splitlines():
        wanted = (f'route="{CLASSIFY}"', 'status="200"', 'method="POST"')
        if line.startswith("leuk_http_requests_total{") and all(w in line for w in wanted):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def stored_ok(url: str) -> tuple[int, int]:
    """(request records with status 200, image records with status 200)."""
    store = AuditStore(url)
    try:
        with store.reading() as connection:
            rows = connection.execute(
                text("SELECT kind, count(*) FROM audit_record WHERE status = 200 GROUP BY kind")
            ).all()
    finally:
        store.close()
    counts = {str(kind): int(n) for kind, n in rows}
    return counts.get("request", 0), counts.get("image", 0)


def load_point(
    out: Path, store: Path, env: dict[str, str], name: str, duration: float, warmup: float
) -> dict[str, Any]:
    bodies = make_bodies(IMAGE, out)
    server = service_server(out, store, env=env, name=name)
    with running(server):
        server.start()
        url = server.base_url + CLASSIFY
        run_wrk(url, bodies["raw"], 32, warmup, 10**9)
        server.wait_idle()
        cpu0 = server.cpu_seconds()
        before = parse_histograms(server.get_text("/metrics"))
        result = summarise(run_wrk(url, bodies["raw"], 32, duration, 10**9), 32)
        server.wait_idle()
        result["server_cpu_s"] = server.cpu_seconds() - cpu0
        metrics = server.get_text("/metrics") or ""
        result["served_200"] = served_ok(metrics)
        write = histogram_means(before, parse_histograms(metrics)).get("leuk_audit_write_seconds")
        if write:
            result["audit_batches"] = write["count"]
            result["audit_write_mean_ms"] = round(write["mean"] * 1000, 3)
    return result


async def _sigterm_client(base_url: str, body: bytes, stop_after: float) -> dict[str, Any]:
    answered: list[str] = []
    refused: dict[str, int] = {}
    start = time.monotonic()
    stop = asyncio.Event()

    async def worker(n: int, client: httpx.AsyncClient) -> None:
        i = 0
        while not stop.is_set() or time.monotonic() - start < stop_after + 30:
            request_id = f"term-{n}-{i}"
            i += 1
            try:
                response = await client.post(
                    CLASSIFY,
                    content=body,
                    headers={"content-type": "image/bmp", "x-request-id": request_id},
                )
            except httpx.HTTPError as exc:
                refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
                return  # the server stopped listening
            if response.status_code == 200:
                answered.append(request_id)
            else:
                refused[str(response.status_code)] = refused.get(str(response.status_code), 0) + 1

    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(worker(n, client)) for n in range(32)]
        await asyncio.sleep(stop_after)
        stop.set()
        await asyncio.gather(*tasks)
    return {"answered_200": answered, "not_answered": refused}


def sigterm_point(out: Path, store: Path, env: dict[str, str], url: str) -> dict[str, Any]:
    server = service_server(out, store, env=env, name="sigterm")
    with running(server):
        server.start()
        assert server.process is not None
        process = server.process

        async def scenario() -> dict[str, Any]:
            client = asyncio.create_task(_sigterm_client(server.base_url, IMAGE.read_bytes(), 4))
            await asyncio.sleep(4)
            process.send_signal(signal.SIGTERM)
            return await client

        result = asyncio.run(scenario())
        process.wait(timeout=60)
        result["exit_code"] = process.returncode
    ids = result.pop("answered_200")
    store_ = AuditStore(url)
    try:
        with store_.reading() as connection:
            recorded = {
                row[0]
                for row in connection.execute(
                    text(
                        "SELECT request_id FROM audit_record "
                        "WHERE kind = 'request' AND status = 200"
                    )
                )
            }
        verified = store_.verify().ok
    finally:
        store_.close()
    missing = [i for i in ids if i not in recorded]
    return {
        **result,
        "answered_200": len(ids),
        "answered_without_record": len(missing),
        "chain_intact": verified,
    }


def verify_time(url: str, n: int = 100_000) -> dict[str, Any]:
    store = AuditStore(url)
    try:
        now = utc_timestamp()
        for start in range(0, n, 5000):
            batch = []
            for i in range(start, min(n, start + 5000), 2):
                common = {"recorded_at": now, "request_id": f"v{i}", "status": 200,
                          "model": "cnmc-improved-cnn", "model_version": 2}  # fmt: skip
                batch.append({**common, "kind": "request", "caller": "lab", "route": CLASSIFY,
                              "model_digest": "ab" * 32, "threshold": 0.5, "latency_ms": 12.5,
                              "n_images": 1})  # fmt: skip
                batch.append({**common, "kind": "image", "image_index": 0, "sha256": "cd" * 32,
                              "format": "BMP", "width": 450, "height": 450,
                              "byte_size": 608454, "label": "all", "blast_probability": 0.87,
                              "out_of_distribution": False, "ood_reasons": [],
                              "warnings": []})  # fmt: skip
            store.append(batch)
        started = time.perf_counter()
        result = store.verify()
        seconds = time.perf_counter() - started
    finally:
        store.close()
    return {"records": result.checked, "ok": result.ok, "seconds": round(seconds, 2)}


def size_per_1000_images(url: str, sqlite_file: Path | None) -> dict[str, Any]:
    store = AuditStore(url)
    try:
        with store.reading() as connection:
            images = connection.execute(
                text("SELECT count(*) FROM audit_record WHERE kind = 'image'")
            ).scalar_one()
            if sqlite_file is not None:
                with sqlite3.connect(sqlite_file) as raw:  # fold the WAL into the file
                    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                size = sqlite_file.stat().st_size
            else:
                size = connection.execute(
                    text("SELECT pg_total_relation_size('audit_record')")
                ).scalar_one()
    finally:
        store.close()
    return {
        "images": int(images),
        "bytes": int(size),
        "kib_per_1000_images": round(size / 1024 / max(1, images) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--skip-sigterm", action="store_true")
    args = parser.parse_args(argv)
    # Stopped with SIGTERM: still stop the PostgreSQL server (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = args.out or REPO / "bench" / "results" / "tmp" / time.strftime("audit-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found: apt-get install -y postgresql")
    root = Path(tempfile.mkdtemp(prefix="leuk-bench-pg-"))
    postgres = PostgresServer(bin_dir, root)
    postgres.init()
    postgres.start()
    report: dict[str, Any] = {"points": {"off": [], "sqlite": [], "postgresql": []}}
    try:
        databases: dict[str, tuple[str, Path | None]] = {}
        for round_ in range(args.rounds):
            for variant in ("off", "sqlite", "postgresql"):
                data_dir = out / f"data-{variant}-{round_}"
                env = {"LEUK_DATA_DIR": str(data_dir), "LEUK_AUDIT_ENABLED": "true"}
                url: str | None = None
                sqlite_file = None
                if variant == "off":
                    env["LEUK_AUDIT_ENABLED"] = "false"
                elif variant == "sqlite":
                    sqlite_file = data_dir / "audit.sqlite3"
                    url = f"sqlite:///{sqlite_file}"
                else:
                    url = postgres.new_database()
                    env["LEUK_AUDIT_DATABASE_URL"] = url
                point = load_point(out, args.model_store, env, f"{variant}-{round_}",
                                   args.duration, args.warmup)  # fmt: skip
                if url is not None:
                    point["stored_200_requests"], point["stored_200_images"] = stored_ok(url)
                    point["records_lost"] = point["served_200"] - point["stored_200_requests"]
                    databases[variant] = (url, sqlite_file)
                report["points"][variant].append(point)
                print(f"{variant} round {round_}: {point['images_per_s']:.1f} images/s, "
                      f"served {point['served_200']}, lost {point.get('records_lost', '-')}",
                      flush=True)  # fmt: skip
        report["summary"] = _summary(report["points"])
        report["size"] = {
            variant: size_per_1000_images(url, sqlite_file)
            for variant, (url, sqlite_file) in databases.items()
        }
        if not args.skip_sigterm:
            data_dir = out / "data-sigterm"
            url = f"sqlite:///{data_dir / 'audit.sqlite3'}"
            report["sigterm"] = sigterm_point(
                out, args.model_store, {"LEUK_DATA_DIR": str(data_dir)}, url
            )
            print(f"sigterm: {report['sigterm']}", flush=True)
        report["verify_100k"] = {
            "sqlite": verify_time(f"sqlite:///{out / 'verify.sqlite3'}"),
            "postgresql": verify_time(postgres.new_database()),
        }
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    (out / "audit.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in report if k != "points"}, indent=2))
    return 0


def _summary(points: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    off = statistics.mean(p["images_per_s"] for p in points["off"])
    summary: dict[str, Any] = {"off_images_per_s": round(off, 1)}
    for variant in ("sqlite", "postgresql"):
        on = statistics.mean(p["images_per_s"] for p in points[variant])
        summary[variant] = {
            "images_per_s": round(on, 1),
            "cost_percent": round((1 - on / off) * 100, 1),
            "records_lost": sum(p["records_lost"] for p in points[variant]),
            "p50_ms": [round(p["latency_ms"]["p50"], 1) for p in points[variant]],
            "server_cpu_ms_per_image": _cpu_per_image(points[variant]),
        }
    summary["off_server_cpu_ms_per_image"] = _cpu_per_image(points["off"])
    summary["off_p50_ms"] = [round(p["latency_ms"]["p50"], 1) for p in points["off"]]
    summary["per_round_images_per_s"] = {
        v: [round(p["images_per_s"], 1) for p in points[v]] for v in points
    }
    return summary


def _cpu_per_image(points: list[dict[str, Any]]) -> float:
    """Server CPU per image answered: unlike images/s, barely moved by other processes."""
    cpu = sum(p["server_cpu_s"] for p in points)
    images = sum(p["ok"] for p in points)
    return round(cpu / max(1, images) * 1000, 2)


if __name__ == "__main__":
    sys.exit(main())
