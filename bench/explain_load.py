"""Explain latency, and classify throughput with and without explanations running alongside.

    .venv/bin/python -m app &                       # the service as shipped (LEUK_PORT=8000)
    .venv/bin/python -m bench.explain_load --url http://127.0.0.1:8000 --seconds 8

Classify: ``--clients`` threads each posting one real C-NMC image per request for
``--seconds``, alternated ``--repeat`` times with the same while one more client posts
8-image explain requests back to back (explain_busy answers are counted, not retried).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx

CELLS = sorted((Path(__file__).resolve().parents[1] / "tests/data/cnmc_real").rglob("*.png"))


def explain_latency(url: str, model: str, rounds: int) -> dict[str, float]:
    times = []
    with httpx.Client(base_url=url, timeout=120) as http:
        path = f"/v1/models/{model}/explain"
        http.post(path, files=[("files", ("c.png", CELLS[0].read_bytes(), "image/png"))])
        for _ in range(rounds):
            for cell in CELLS:
                started = time.perf_counter()
                r = http.post(path, files=[("files", ("c.png", cell.read_bytes(), "image/png"))])
                times.append(time.perf_counter() - started)
                r.raise_for_status()
    times.sort()
    return {
        "median_ms": round(1000 * statistics.median(times), 1),
        "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 1),
        "n": len(times),
    }


def classify_load(url: str, clients: int, seconds: float, explain: bool) -> dict[str, float]:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    explained = [0, 0]  # images explained, explain_busy answers
    lock = threading.Lock()

    def classify_client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            i = offset
            while time.monotonic() < stop:
                cell = CELLS[i % len(CELLS)].read_bytes()
                started = time.perf_counter()
                r = http.post("/v1/classify", content=cell, headers={"content-type": "image/png"})
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)
                i += 1

    def explain_client() -> None:
        files = [
            ("files", (f"{i}.png", c.read_bytes(), "image/png")) for i, c in enumerate(CELLS[:8])
        ]
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop:
                r = http.post("/v1/explain", files=files)
                if r.status_code == 503:
                    explained[1] += 1
                    time.sleep(0.05)
                else:
                    r.raise_for_status()
                    explained[0] += 8

    threads = [threading.Thread(target=classify_client, args=(i,)) for i in range(clients)]
    if explain:
        threads.append(threading.Thread(target=explain_client))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "classify_images_per_s": round(len(latencies) / seconds, 1),
        "classify_p50_ms": round(1000 * statistics.median(latencies), 1),
        "classify_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "explained_images": explained[0],
        "explain_busy": explained[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--models", nargs="+", default=["cnmc-improved-cnn/versions/3", "cnmc-paper-cnn/versions/2"]
    )
    args = parser.parse_args()
    out: dict[str, object] = {
        "explain_latency_single_image": {
            m: explain_latency(args.url, m, args.rounds) for m in args.models
        },
    }
    # Alternated, so load from other processes on a shared machine hits both alike.
    runs: dict[str, list[dict[str, float]]] = {"classify_alone": [], "classify_with_explain": []}
    for _ in range(args.repeat):
        for key, explain in (("classify_alone", False), ("classify_with_explain", True)):
            runs[key].append(classify_load(args.url, args.clients, args.seconds, explain))
    for key, measured in runs.items():
        out[key] = measured
        out[f"{key}_median_images_per_s"] = statistics.median(
            m["classify_images_per_s"] for m in measured
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
