"""The benchmark harness: request bodies, the two benchmark-only apps, wrk status counting,
and the comparison and report. Numbers are never asserted here; only that they are measured
and computed correctly."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from bench import report
from bench.http_floor_app import create_app as create_floor_app
from bench.load import make_bodies, run_wrk, summarise
from bench.run import histogram_means, parse_histograms, resolve_default_model
from bench.servers import HOST, ServerProcess, free_port, running

REPO = Path(__file__).resolve().parents[2]
BMP = REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp"


def _classify(app: FastAPI, requests: list[tuple[Path, str]]) -> list[httpx.Response]:
    """POST each (body file, content type) to /v1/classify of the app, lifespan included."""

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                return [
                    await client.post(
                        "/v1/classify", content=path.read_bytes(), headers={"Content-Type": kind}
                    )
                    for path, kind in requests
                ]

    return anyio.run(run)


def test_both_request_bodies_carry_the_exact_image(tmp_path: Path) -> None:
    bodies = make_bodies(BMP, tmp_path)
    responses = _classify(create_floor_app(), [(b.path, b.content_type) for b in bodies.values()])
    for body, response in zip(bodies.values(), responses, strict=True):
        assert response.status_code == 200, body.kind
        assert response.json() == {"bytes": BMP.stat().st_size}, body.kind
    assert b'filename="cell.bmp"' in bodies["multipart"].path.read_bytes()  # no subject id


def test_naive_app_runs_keras_predict_on_the_real_bmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.app.tiny_model import export_tiny_model, reference_predict

    version_dir = export_tiny_model(tmp_path / "store", "tiny", 1)
    monkeypatch.setenv("NAIVE_MODEL_DIR", str(version_dir))
    from bench.naive_app import create_app

    bodies = list(make_bodies(BMP, tmp_path).values())
    pixels = np.asarray(Image.open(io.BytesIO(BMP.read_bytes())).convert("RGB"))
    expected = float(reference_predict(version_dir, pixels[np.newaxis])[0, 1])
    (tmp_path / "junk").write_bytes(b"not an image")
    requests = [(b.path, b.content_type) for b in bodies] + [(tmp_path / "junk", "image/bmp")]
    *images, junk = _classify(create_app(), requests)
    for body, response in zip(bodies, images, strict=True):
        assert response.status_code == 200, body.kind
        assert response.json()["p_all"] == pytest.approx(expected, abs=1e-5)
    assert junk.status_code == 415


def test_resolve_default_model_skips_what_the_service_skips(tmp_path: Path) -> None:
    """The benchmark asks the service's registry: a newest version whose files do not verify
    (here half-copied) is skipped, as the service skips it; folders that are not versions
    are ignored."""
    from tests.app.tiny_model import export_tiny_model

    for version in (1, 3, 10):
        export_tiny_model(tmp_path, "m", version, seed=version)
    (tmp_path / "m" / ".tmp-11-x").mkdir()
    (tmp_path / "m" / "abc").mkdir()
    (tmp_path / "DEFAULT").write_text("m\n")
    assert resolve_default_model(tmp_path) == ("m", 10, tmp_path / "m" / "10")
    (tmp_path / "m" / "10" / "saved_model.pb").unlink()
    assert resolve_default_model(tmp_path) == ("m", 3, tmp_path / "m" / "3")


def test_histogram_means_are_per_run_deltas() -> None:
    before = parse_histograms(
        "# HELP x\nleuk_queue_wait_seconds_sum 1.0\nleuk_queue_wait_seconds_count 10\n"
        'leuk_batch_size_sum{model="a"} 5\nleuk_batch_size_count{model="a"} 5\n'
        "python_gc_objects_collected_total 3\n"
    )
    after = parse_histograms(
        "leuk_queue_wait_seconds_sum 3.0\nleuk_queue_wait_seconds_count 20\n"
        'leuk_batch_size_sum{model="a"} 5\nleuk_batch_size_count{model="a"} 5\n'
    )
    means = histogram_means(before, after)
    assert means == {"leuk_queue_wait_seconds": {"count": 10.0, "mean": 0.2}}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_script_counts_ok_and_error_statuses(tmp_path: Path) -> None:
    bodies = make_bodies(BMP, tmp_path)
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.http_floor_app:create_app",
        "--host", HOST, "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    server = ServerProcess("floor", command, {}, port, tmp_path / "floor.log")
    with running(server):
        server.start(timeout_s=60)
        ok = summarise(run_wrk(server.base_url + "/v1/classify", bodies["raw"], 2, 1, 200), 2)
        missing = summarise(run_wrk(server.base_url + "/nowhere", bodies["raw"], 2, 1, 50), 2)
        cpu = server.cpu_seconds()
        memory = server.memory()
    assert ok["ok"] > 0 and ok["errors"] == 0
    # The cap stops wrk's event loop after the 200th response, but responses already read in that
    # same loop pass are still counted (wrk's aeStop takes effect between passes): at most
    # concurrency - 1 over the cap.
    assert 0 < ok["requests"] <= 200 + (2 - 1)
    assert 0 < ok["latency_ms"]["p50"] <= ok["latency_ms"]["p99"] <= ok["latency_ms"]["max"]
    assert missing["ok"] == 0 and missing["errors"] == missing["requests"] > 0
    assert set(missing["statuses"]) == {"404"}
    assert cpu > 0 and memory["vm_hwm_kib"] > 0


def _run(
    target: str, c: int, images_per_s: float, errors: int = 0, p50: float = 5.0
) -> dict[str, Any]:
    return {
        "target": target, "body": "raw", "concurrency": c, "images_per_s": images_per_s,
        "requests": 100, "ok": 100 - errors, "errors": errors,
        "latency_ms": {"p50": p50, "p95": 2 * p50, "p99": 3 * p50, "max": 4 * p50, "mean": p50,
                       "littles_law_mean": p50},
        "server_cpu_s": 10.0, "server_cpu_util": 1.5, "server_cpu_ms_per_image": 3.0,
        "wrk_cpu_util": 0.1, "other_cpu_util": 0.0, "server_histograms": {},
    }  # fmt: skip


def _results(service_c32: float, errors: int, service_c64: float, p50_c1: float) -> dict[str, Any]:
    runs = [
        _run("service", 1, 100, p50=p50_c1), _run("service", 32, service_c32, errors),
        _run("service", 64, service_c64), _run("naive", 1, 15), _run("naive", 32, 16),
        _run("naive", 64, 16),
    ]  # fmt: skip
    return {
        "meta": {
            "started_utc": "t", "command": "python -m bench", "elapsed_s": 1.0,
            "model": {"name": "m", "version": 1, "dir": "x"},
            "machine": {"cpus": 2, "cpu_model": "cpu"},
            "wrk": "wrk 4", "wrk_cpu_pin": None, "duration_s": 10, "warmup_s": 2, "image": "x.bmp",
            "loadavg_before": ["0", "0", "0"], "training_processes_before": [],
        },
        "ceiling": {"signature": {"best_images_per_s": 400.0}},
        "servers": {}, "runs": runs,
    }  # fmt: skip


def test_comparison_ratios_and_targets() -> None:
    met = report.compare(_results(service_c32=320, errors=0, service_c64=260, p50_c1=4.0))
    assert met["by_concurrency"]["32"]["service_over_naive"] == pytest.approx(20.0)
    assert met["by_concurrency"]["64"]["service_over_ceiling"] == pytest.approx(0.65)
    assert all(t["met"] for t in met["targets"].values())

    missed = report.compare(_results(service_c32=320, errors=1, service_c64=200, p50_c1=12.0))
    assert not any(t["met"] for t in missed["targets"].values())  # one error fails c=32 too


def test_markdown_and_plot_are_written(tmp_path: Path) -> None:
    results = _results(service_c32=150, errors=0, service_c64=300, p50_c1=4.0)
    results["ceiling"] = None
    text = report.markdown(results)
    assert "| c=32: service >= 10x naive images/s, zero errors | 9.4x, 0 errors | NO |" in text
    assert "| service | raw | 64 | 300.0 |" in text
    report.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(results)  # the results stay JSON-serialisable


@pytest.mark.parametrize(
    ("version", "members", "views", "label"),
    [
        ("cnmc-improved-cnn/2", 3, 4, "improved, cv_ensemble of 3 members"),
        ("cnmc-improved-cnn/1", 0, 8, "improved"),
        ("cnmc-paper-cnn/1", 0, None, "paper"),
    ],
)
def test_ceiling_benchmarks_the_network_the_store_serves(
    version: str, members: int, views: int | None, label: str
) -> None:
    """The network-only comparison rebuilds what the version serves: a cv_ensemble version
    as all its members averaged, each with the card's test-time views."""
    from bench.ceiling import served_network
    from contract.card import ModelCard
    from training.models import DihedralAverage, MeanEnsemble

    card = ModelCard.model_validate_json(
        (REPO / "model_store" / version / "model_card.json").read_text()
    )
    model, name, options = served_network(card)
    assert name == label
    nets = model.members if members else [model]
    assert isinstance(model, MeanEnsemble) == bool(members) and len(nets) == max(members, 1)
    for net in nets:
        assert isinstance(net, DihedralAverage) == (views is not None)
        if views is not None:
            assert net.views == views
    if card.architecture == "improved":
        assert list(options["widths"]) == card.training.config["widths"]
