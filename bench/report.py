"""Turn one run's results into the comparison, a markdown report and a PNG plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TARGET_C32_VS_NAIVE = 10.0
TARGET_C64_VS_CEILING = 0.60
TARGET_C1_P50_MS = 10.0

Run = dict[str, Any]
PEER_TARGETS = ("bentoml", "litserve", "pytriton")  # plotted with whatever body they take


def find_run(
    results: dict[str, Any], target: str, concurrency: int, body: str = "raw"
) -> Run | None:
    for run in results.get("runs", []):
        if (run["target"], run["concurrency"], run["body"]) == (target, concurrency, body):
            return dict(run)
    return None


def ceiling_images_per_s(results: dict[str, Any]) -> float | None:
    ceiling = results.get("ceiling")
    return float(ceiling["signature"]["best_images_per_s"]) if ceiling else None


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios service/naive and service/ceiling per concurrency, and the three targets."""
    ceiling = ceiling_images_per_s(results)
    runs = results.get("runs", [])
    concurrencies = sorted(
        {r["concurrency"] for r in runs if r["target"] == "service" and r["body"] == "raw"}
    )
    by_concurrency: dict[str, dict[str, float]] = {}
    for c in concurrencies:
        service, naive = find_run(results, "service", c), find_run(results, "naive", c)
        assert service is not None
        row = {"service_images_per_s": service["images_per_s"]}
        if naive and naive["images_per_s"] > 0:
            row["naive_images_per_s"] = naive["images_per_s"]
            row["service_over_naive"] = service["images_per_s"] / naive["images_per_s"]
        if ceiling:
            row["service_over_ceiling"] = service["images_per_s"] / ceiling
        by_concurrency[str(c)] = row

    targets: dict[str, Any] = {}
    c32, c64 = by_concurrency.get("32", {}), by_concurrency.get("64", {})
    s32, s1 = find_run(results, "service", 32), find_run(results, "service", 1)
    if "service_over_naive" in c32 and s32:
        ratio = c32["service_over_naive"]
        targets["c32_service_over_naive"] = {
            "value": ratio,
            "errors": s32["errors"],
            "met": ratio >= TARGET_C32_VS_NAIVE and s32["errors"] == 0,
        }
    if "service_over_ceiling" in c64:
        ratio = c64["service_over_ceiling"]
        targets["c64_service_over_ceiling"] = {
            "value": ratio,
            "met": ratio >= TARGET_C64_VS_CEILING,
        }
    if s1:
        p50 = s1["latency_ms"]["p50"]
        targets["c1_p50_ms"] = {"value": p50, "met": p50 < TARGET_C1_P50_MS}
    return {"ceiling_images_per_s": ceiling, "by_concurrency": by_concurrency, "targets": targets}


def compare_peers(results: dict[str, Any]) -> dict[str, Any]:
    """Per concurrency: images/s, p50 and p99 of the service (raw and multipart body), the naive
    baseline and each peer framework; the best peer by images/s; and service / best peer.

    A peer counts only if it answered every request of the point (zero errors): a server that
    fails requests fast is not faster."""
    peers = list(results.get("meta", {}).get("peers", []))
    by_concurrency: dict[str, Any] = {}
    for c in sorted({int(r["concurrency"]) for r in results.get("runs", [])}):
        points: dict[str, Any] = {}
        for label, target, body in [
            ("service", "service", "raw"),
            ("service multipart", "service", "multipart"),
            ("naive", "naive", "raw"),
            *[(peer, peer, None) for peer in peers],
        ]:
            run, repeats = _median_run(results, target, c, body)
            if run is not None:
                points[label] = {
                    "body": run["body"],
                    "images_per_s": run["images_per_s"],
                    "p50_ms": run["latency_ms"]["p50"],
                    "p99_ms": run["latency_ms"]["p99"],
                    "errors": run["errors"],
                    "repeats": repeats,
                }
        valid = {p: points[p] for p in peers if p in points and points[p]["errors"] == 0}
        row: dict[str, Any] = {"points": points}
        if valid:
            best = max(valid, key=lambda p: float(valid[p]["images_per_s"]))
            best_rate = float(valid[best]["images_per_s"])
            row["best_peer"] = best
            row["best_peer_images_per_s"] = best_rate
            for label, key in (
                ("service", "service_over_best_peer"),
                ("service multipart", "service_multipart_over_best_peer"),
            ):
                if label in points and best_rate > 0:
                    row[key] = float(points[label]["images_per_s"]) / best_rate
        if points:
            by_concurrency[str(c)] = row
    return {"peers": peers, "by_concurrency": by_concurrency}


def _median_run(
    results: dict[str, Any], target: str, concurrency: int, body: str | None
) -> tuple[Run | None, int]:
    """The run of median images/s among a point's repeats (``--concurrency 64 64 64``; the
    lower middle one of an even count), and how many repeats there were. ``body`` None: any."""
    runs = sorted(
        (
            run
            for run in results.get("runs", [])
            if (run["target"], run["concurrency"]) == (target, concurrency)
            and body in (None, run["body"])
        ),
        key=lambda run: float(run["images_per_s"]),
    )
    if not runs:
        return None, 0
    return dict(runs[(len(runs) - 1) // 2]), len(runs)


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def _mib(kib: int | None) -> str:
    return "n/a" if not kib else f"{kib / 1024:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


RUN_HEADER = (
    "server", "body", "conc.", "images/s", "p50 ms", "p95 ms", "p99 ms", "Little mean ms",
    "errors", "server CPU s", "server CPU (cores)", "server CPU ms/image", "wrk CPU (cores)",
    "other CPU (cores)", "attempts", "peak RSS MiB",
)  # fmt: skip


def _run_row(results: dict[str, Any], r: Run) -> list[object]:
    memory = results.get("servers", {}).get(r["target"], {}).get("memory_end", {})
    lat = r["latency_ms"]
    return [
        r["target"], r["body"], r["concurrency"], _f(r["images_per_s"]), _f(lat["p50"]),
        _f(lat["p95"]), _f(lat["p99"]), _f(lat.get("littles_law_mean")), r["errors"],
        _f(r["server_cpu_s"]), _f(r["server_cpu_util"], 2), _f(r["server_cpu_ms_per_image"], 2),
        _f(r["wrk_cpu_util"], 2), _f(r["other_cpu_util"], 2),
        len(r.get("attempts_other_cpu", [0])), _mib(memory.get("vm_hwm_kib")),
    ]  # fmt: skip


BATCH_HEADER = ("batch", "call median ms", "images/s", "CPU ms/image")


def _batch_rows(by_batch: dict[str, Any]) -> list[list[object]]:
    return [
        [b, _f(row["median_ms"], 2), _f(row["images_per_s"]), _f(row.get("cpu_ms_per_image"), 2)]
        for b, row in by_batch.items()
    ]


def _header(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    model = meta["model"]
    pin = meta["wrk_cpu_pin"]
    before, after = meta["training_processes_before"], meta.get("training_processes_after", [])
    return [
        f"# Benchmark run {meta['started_utc']}",
        "",
        f"- Command: `{meta['command']}` (elapsed {meta.get('elapsed_s', 0):.0f} s; "
        f"git {meta.get('git_commit', 'unknown')})",
        f"- Model: `{model['name']}` version {model['version']} (the store's default)",
        f"- Machine: {meta['machine']['cpus']} CPUs, {meta['machine']['cpu_model']}",
        f"- Load: {meta['wrk']}, 1 thread, one connection per concurrent client, "
        f"{meta['duration_s']:.0f} s measured after {meta['warmup_s']:.0f} s warm-up per point; "
        + (f"wrk pinned to CPU {pin}" if pin is not None else "wrk not pinned"),
        f"- Request: `{meta['image']}` (real C-NMC 450x450 24-bit BMP) as a raw `image/bmp` "
        "body, or as one multipart `files` part",
        f"- Load average before: {' '.join(meta['loadavg_before'])}; "
        f"`python -m training` processes before: {len(before)}, after: {len(after)}",
    ]


TARGET_NAMES = {
    "c32_service_over_naive": "c=32: service >= 10x naive images/s, zero errors",
    "c64_service_over_ceiling": "c=64: service >= 60% of the in-process ceiling",
    "c1_p50_ms": "c=1: p50 latency < 10 ms",
}


def _targets(comparison: dict[str, Any]) -> list[str]:
    if not comparison["targets"]:
        return []
    rows = []
    for key, target in comparison["targets"].items():
        value = target["value"]
        if key == "c32_service_over_naive":
            shown = f"{value:.1f}x, {target['errors']} errors"
        elif key == "c64_service_over_ceiling":
            shown = f"{100 * value:.1f}%"
        else:
            shown = f"{value:.2f} ms"
        rows.append([TARGET_NAMES[key], shown, "yes" if target["met"] else "NO"])
    return ["## Targets", "", *_table(["target", "measured", "met"], rows)]


def _comparison(comparison: dict[str, Any]) -> list[str]:
    if not comparison["by_concurrency"]:
        return []
    rows = []
    for c, row in comparison["by_concurrency"].items():
        over_ceiling = row.get("service_over_ceiling")
        rows.append([
            c, _f(row.get("service_images_per_s")), _f(row.get("naive_images_per_s")),
            _ratio(row.get("service_over_naive")),
            "n/a" if over_ceiling is None else f"{100 * over_ceiling:.0f}%",
        ])  # fmt: skip
    header = ["conc.", "service images/s", "naive images/s", "service / naive", "service / ceiling"]
    return [
        "## Service vs naive vs ceiling (raw image/bmp body)",
        "",
        "Ceiling: the exported signature called in-process on decoded images at its best batch: "
        f"{_f(comparison['ceiling_images_per_s'])} images/s.",
        "",
        *_table(header, rows),
    ]


def _peer_section(results: dict[str, Any]) -> list[str]:
    comparison = results.get("peer_comparison")
    if not comparison or not comparison["by_concurrency"]:
        return []
    rows_points = [row["points"] for row in comparison["by_concurrency"].values()]
    labels = [
        label
        for label in ["service", "service multipart", "naive", *comparison["peers"]]
        if any(label in points for points in rows_points)
    ]
    rows = []
    for c, row in comparison["by_concurrency"].items():
        cells = []
        for label in labels:
            point = row["points"].get(label)
            if point is None:
                cells.append("n/a")
                continue
            errors = f", {point['errors']} errors" if point["errors"] else ""
            if point.get("repeats", 1) > 1:
                errors += f", median of {point['repeats']}"
            cells.append(
                f"{_f(point['images_per_s'])} ({_f(point['p50_ms'], 0)} / "
                f"{_f(point['p99_ms'], 0)}{errors})"
            )
        rows.append([
            c, *cells, row.get("best_peer", "n/a"),
            _ratio2(row.get("service_over_best_peer")),
            _ratio2(row.get("service_multipart_over_best_peer")),
        ])  # fmt: skip
    bodies = {
        label: point["body"]
        for row in comparison["by_concurrency"].values()
        for label, point in row["points"].items()
    }
    header = [
        "conc.", *[f"{label} [{bodies.get(label, '?')}]" for label in labels], "best peer",
        "service / best peer", "service multipart / best peer",
    ]  # fmt: skip
    return [
        "## Service vs peer frameworks (same model, decode, threshold, image and load)",
        "",
        "Each cell: images/s (p50 / p99 ms). The request body each server takes is in brackets "
        "(BentoML and LitServe read a raw body as JSON, so they take the image as a multipart "
        "part; Triton takes the KServe v2 binary body). The best peer is the one with the most "
        "images/s among those with zero errors; a ratio above 1.00x means the service is ahead. "
        "A point measured several times (a concurrency repeated in --concurrency) shows the "
        "repeat with the median images/s.",
        "",
        *_table(header, rows),
    ]


def _ratio2(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _ceiling_section(results: dict[str, Any]) -> list[str]:
    ceiling = results.get("ceiling")
    if not ceiling:
        return []
    pre, sig = ceiling["preprocessing"], ceiling["signature"]

    def step(name: str, m: dict[str, float], digits: int = 3) -> list[object]:
        return [name, _f(m["median_ms"], digits), _f(m["cpu_ms_per_image"], digits)]

    best = sig["by_batch"][str(sig["best_batch"])]
    steps: list[list[object]] = [
        step("PIL decode BMP to RGB uint8", pre["decode_pil"]),
        step(f"resize to {pre.get('resize_to')}, tf.image.resize", pre["resize_tf_bilinear"]),
        step("resize with PIL bilinear (for comparison)", pre["resize_pil_bilinear"]),
        step("Keras `model.predict`, one image (naive path)", ceiling["keras_predict_batch1"], 2),
        step("exported signature, one image (compiled call)", sig["by_batch"]["1"], 2),
        [f"exported signature per image at best batch {sig['best_batch']}",
         _f(best["median_ms"] / sig["best_batch"], 2), _f(best["cpu_ms_per_image"], 2)],
    ]  # fmt: skip
    lines = [
        "## In-process ceiling and per-image costs (no HTTP)",
        "",
        f"TensorFlow {ceiling['tensorflow']}, threading {ceiling['threads']}; peak RSS of the "
        f"ceiling process {_mib(ceiling['vm_hwm_kib_before_tflite'])} MiB; other processes used "
        f"{_f(ceiling.get('other_cpu_util'), 2)} cores meanwhile (attempts: "
        f"{ceiling.get('attempts_other_cpu')}).",
        "",
        *_table(["step (one 450x450 image)", "median ms", "CPU ms"], steps),
        "",
        *_table(BATCH_HEADER, _batch_rows(sig["by_batch"])),
    ]  # fmt: skip
    threads = sig.get("single_image_threads", {})
    if threads:
        parts = [
            f"{n} threads {_f(v['images_per_s'])} images/s "
            f"({_f(v['cpu_ms_per_image'], 2)} CPU ms/image)"
            for n, v in threads.items()
        ]
        lines += [
            "",
            "One image per call from several threads at once (the service's "
            "LEUK_EXACT_BATCHING=true mode): " + "; ".join(parts) + ".",
        ]
    tflite = ceiling.get("tflite")
    if tflite and "by_batch" in tflite:
        lines += [
            "",
            f"TensorFlow Lite conversion of the whole signature ({tflite['flatbuffer_bytes']} "
            f"bytes, XNNPACK): best {_f(tflite['best_images_per_s'])} images/s at batch "
            f"{tflite['best_batch']}, vs {_f(sig['best_images_per_s'])} for the SavedModel.",
            "",
            *_table(("TFLite batch", *BATCH_HEADER[1:]), _batch_rows(tflite["by_batch"])),
        ]  # fmt: skip
    elif tflite:
        lines += [
            "",
            f"TensorFlow Lite conversion of the whole signature failed: {tflite['error']}",
        ]
    lines += _core_runtimes(ceiling.get("core_runtimes"))
    return lines


def _core_runtimes(core: dict[str, Any] | None) -> list[str]:
    if not core:
        return []
    if "error" in core:
        return ["", f"Network-only TensorFlow vs TFLite comparison failed: {core['error']}"]
    tf_rows, lite_rows = core["tensorflow"]["by_batch"], core["tflite"]["by_batch"]
    rows = [
        [b, _f(tf_rows[b]["median_ms"], 2), _f(lite_rows[b]["median_ms"], 2),
         _f(tf_rows[b]["images_per_s"]), _f(lite_rows[b]["images_per_s"])]
        for b in tf_rows
    ]  # fmt: skip
    header = ["batch", "TF call ms", "TFLite call ms", "TF images/s", "TFLite images/s"]
    return [
        "",
        f"The network alone ({core['architecture']}, {core['input_size']}x{core['input_size']} "
        "input, after crop and resize; same architecture, untrained weights: speed only), "
        "TensorFlow `tf.function` vs TFLite with XNNPACK:",
        "",
        *_table(header, rows),
    ]


def _hist_mean(run: Run, name: str) -> float | None:
    for key, value in run.get("server_histograms", {}).items():
        if key.split("{", 1)[0] == name:
            return float(value["mean"])
    return None


def _nearest_batch(by_batch: dict[str, Any], size: float) -> str:
    return min(by_batch, key=lambda b: abs(int(b) - size))


def _time_budget(results: dict[str, Any]) -> list[str]:
    """Per-image CPU and per-request time, split into the parts measured separately."""
    ceiling = results.get("ceiling")
    floor = find_run(results, "http-floor", 32)
    service_runs = [
        r for r in results.get("runs", []) if r["target"] == "service" and r["body"] == "raw"
    ]
    if not ceiling or not floor or not service_runs:
        return []
    by_batch = ceiling["signature"]["by_batch"]
    decode_cpu = ceiling["preprocessing"]["decode_pil"]["cpu_ms_per_image"]
    modes = results.get("servers", {}).get("service", {}).get("batching", [])
    # Results of services that padded lone images to 2 rows (older runs kept in results/)
    # computed the padding too; the batch-size histogram counts real images only.
    pad_to = 2 if any("padded to >= 2" in mode for mode in modes) else 1
    rows = []
    for r in sorted(service_runs, key=lambda r: int(r["concurrency"])):
        batch = _hist_mean(r, "leuk_inference_batch_size") or 1.0
        computed = max(batch, pad_to)
        nearest = _nearest_batch(by_batch, computed)
        inference_cpu = by_batch[nearest]["cpu_ms_per_image"] * computed / batch
        total = r["server_cpu_ms_per_image"]
        floor_cpu = floor["server_cpu_ms_per_image"]
        rest = total - floor_cpu - decode_cpu - inference_cpu if total else None
        queue = _hist_mean(r, "leuk_queue_wait_seconds")
        infer_s = _hist_mean(r, "leuk_inference_seconds")
        rows.append([
            r["concurrency"], _f(total, 2), _f(floor_cpu, 2), _f(decode_cpu, 2),
            f"{_f(inference_cpu, 2)} (batch {nearest})", _f(rest, 2), _f(batch, 2),
            _f(1000 * queue if queue is not None else None, 1),
            _f(1000 * infer_s if infer_s is not None else None, 1), _f(r["latency_ms"]["mean"], 1),
        ])  # fmt: skip
    header = [
        "conc.", "service CPU ms/image", "HTTP floor CPU ms/req", "decode CPU ms",
        "inference CPU ms/image (in-process)", "rest CPU ms", "mean batch", "mean queue wait ms",
        "mean batch inference ms", "mean latency ms",
    ]  # fmt: skip
    return [
        "## Where the time goes (service, raw body)",
        "",
        "CPU per image: the service's measured CPU split into the HTTP floor (uvicorn + FastAPI "
        "reading the body, from the floor server at c=32), PIL decode and the model at the batch "
        "size the service actually formed (from its own histogram, nearest measured in-process "
        "batch, counting the copy a padded lone image computes); 'rest' is everything else "
        "(input checks, thread hand-offs, batching, JSON, logging, metrics, idle spinning of "
        "TensorFlow's threads). Time per request: the service's own queue-wait and inference "
        "histograms.",
        "",
        *_table(header, rows),
    ]


def _histograms(results: dict[str, Any]) -> list[str]:
    lines = []
    for r in results.get("runs", []):
        if r["target"] == "service" and r.get("server_histograms"):
            parts = [
                f"`{key}` {v['mean']:.4g} (n={v['count']:.0f})"
                for key, v in sorted(r["server_histograms"].items())
            ]
            lines.append(f"- {r['body']} c={r['concurrency']}: " + "; ".join(parts))
    if not lines:
        return []
    return ["## The service's own histograms over each run (mean per observation)", "", *lines]


def _sweep(results: dict[str, Any]) -> list[str]:
    sweep = results.get("sweep")
    if not sweep:
        return []
    rows: list[list[object]] = []
    for variant in sweep:
        if "error" in variant:
            rows.append([variant["variant"], "-", "failed: " + variant["error"][:80]] + [""] * 6)
            continue
        label = f"{variant['variant']} [{', '.join(variant.get('batching', []))}]"
        for r in variant["runs"]:
            rows.append([
                label, r["concurrency"], _f(r["images_per_s"]), _f(r["latency_ms"]["p50"]),
                _f(r["latency_ms"]["p99"]), r["errors"], _f(r["server_cpu_util"], 2),
                _f(r["other_cpu_util"], 2), _mib(variant["memory_end"]["vm_hwm_kib"]),
            ])  # fmt: skip
    header = [
        "variant [batching mode]", "conc.", "images/s", "p50 ms", "p99 ms", "errors",
        "server CPU (cores)", "other CPU (cores)", "peak RSS MiB",
    ]  # fmt: skip
    return ["## Settings sweep (service restarted per variant)", "", *_table(header, rows)]


def markdown(results: dict[str, Any]) -> str:
    comparison = results.get("comparison") or compare(results)
    runs = [_run_row(results, r) for r in results.get("runs", [])]
    sections = [
        _header(results),
        _targets(comparison),
        _comparison(comparison),
        _peer_section(results),
        []
        if not runs
        else [
            "## All load runs",
            "",
            "CPU columns: cores busy on average over the measured window (2.0 = both cores here); "
            "'other' is everything on the machine that is neither the server nor wrk (e.g. a "
            "training job). 'Little mean' is connections / throughput, the true mean time in the "
            "system: wrk's percentiles only count requests that completed inside the window. "
            "A point is measured again (up to 3 attempts, least disturbed kept) when other "
            "processes used more than 0.25 cores during it. "
            "Peak RSS is VmHWM summed over the server's process tree.",
            "",
            *_table(RUN_HEADER, runs),
        ],
        _ceiling_section(results),
        _time_budget(results),
        _histograms(results),
        _sweep(results),
    ]
    if results.get("failures"):
        sections.append(
            ["## Failures", ""] + [f"- {k}: {v}" for k, v in results["failures"].items()]
        )
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {
        "service": ("tab:blue", "o"),
        "naive": ("tab:red", "s"),
        "bentoml": ("tab:orange", "^"),
        "litserve": ("tab:purple", "v"),
        "pytriton": ("tab:brown", "D"),
    }
    for target, (colour, marker) in styles.items():
        runs = sorted(
            (
                r
                for r in results.get("runs", [])
                if r["target"] == target and (r["body"] == "raw" or target in PEER_TARGETS)
            ),
            key=lambda r: int(r["concurrency"]),
        )
        if not runs:
            continue
        cs = [r["concurrency"] for r in runs]
        ax_tp.plot(cs, [r["images_per_s"] for r in runs], marker=marker, color=colour, label=target)
        for pct, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            values = [r["latency_ms"][pct] for r in runs]
            ax_lat.plot(cs, values, style, marker=marker, color=colour, label=f"{target} {pct}")
    ceiling = ceiling_images_per_s(results)
    if ceiling:
        label = f"in-process ceiling ({ceiling:.0f}/s)"
        ax_tp.axhline(ceiling, color="tab:green", linestyle="--", label=label)
        ax_tp.axhline(0.6 * ceiling, color="tab:green", linestyle=":", label="60% of ceiling")
    for ax in (ax_tp, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32, 64], labels=["1", "8", "32", "64"])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.set_ylabel("images/s (HTTP 200 only)")
    ax_tp.set_title("Throughput")
    if ax_tp.get_legend_handles_labels()[0]:
        ax_tp.legend(fontsize=8)
    ax_lat.set_ylabel("latency ms (wrk, completed requests)")
    ax_lat.set_title("Latency percentiles")
    if ax_lat.get_legend_handles_labels()[0]:
        ax_lat.legend(fontsize=7, ncol=2)
    meta = results["meta"]
    model = meta["model"]
    fig.suptitle(
        f"{model['name']} v{model['version']}, 450x450 BMP, {meta['machine']['cpus']} CPUs, "
        f"run {meta['started_utc']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
