"""The peer-framework side of the benchmark: the KServe v2 body wrk sends to Triton, the work
the peers share (bench/peers/common.py) and the service / best-peer table. No framework server
runs here (they live in their own venvs); numbers are never asserted, only how they are built."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import struct
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from bench import report
from bench.load import RequestBody, make_bodies, make_kserve_body, run_wrk, summarise
from bench.servers import HOST

REPO = Path(__file__).resolve().parents[2]
BMP = REPO / "tests" / "data" / "cnmc_bmp" / "UID_51_101_1_all.bmp"


def _parse_kserve(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Split a KServe v2 binary-data request as Triton does: the JSON header, then each BYTES
    element as a 4-byte little-endian length and its bytes."""
    head_length = int(headers["inference-header-content-length"])
    header = json.loads(body[:head_length])
    (tensor,) = header["inputs"]
    data = body[head_length:]
    assert len(data) == tensor["parameters"]["binary_data_size"]
    elements = []
    while data:
        (length,) = struct.unpack("<I", data[:4])
        elements.append(data[4 : 4 + length])
        data = data[4 + length :]
    return header, elements


def test_kserve_body_is_the_image_as_one_bytes_element(tmp_path: Path) -> None:
    body = make_kserve_body(BMP.read_bytes(), tmp_path)
    headers = {name.lower(): value for name, value in body.headers}
    header, elements = _parse_kserve(headers, body.path.read_bytes())
    assert elements == [BMP.read_bytes()]
    (tensor,) = header["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("image", "BYTES", [1, 1])
    # JSON outputs, so Triton answers JSON as the service does
    assert all(not out["parameters"]["binary_data"] for out in header["outputs"])


class _Capture(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_script_sends_the_kserve_header_and_body(tmp_path: Path) -> None:
    """What arrives from wrk (bench/wrk/classify.lua) parses as the image, header included."""
    body = make_kserve_body(BMP.read_bytes(), tmp_path)
    _Capture.seen = []
    server = http.server.ThreadingHTTPServer((HOST, 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{HOST}:{server.server_address[1]}/v2/models/classifier/infer"
        result = summarise(run_wrk(url, body, 1, 1, 5), 1)
    finally:
        server.shutdown()
        server.server_close()
    assert result["ok"] > 0 and result["errors"] == 0
    headers, body = _Capture.seen[0]
    assert headers["content-type"] == "application/octet-stream"
    _, elements = _parse_kserve(headers, body)
    assert elements == [BMP.read_bytes()]


def test_a_body_without_extra_headers_sends_none(tmp_path: Path) -> None:
    raw = make_bodies(BMP, tmp_path)["raw"]
    assert raw.headers == () and isinstance(raw, RequestBody)


def test_peer_classifier_matches_the_model_and_applies_the_card_threshold(tmp_path: Path) -> None:
    """bench/peers/common.py: the service's decode, one batched signature call, the card's
    threshold on the positive label."""
    from bench.peers.common import Classifier
    from tests.app.tiny_model import export_tiny_model, reference_predict

    pixels = np.asarray(Image.open(io.BytesIO(BMP.read_bytes())).convert("RGB"))
    version_dir = export_tiny_model(tmp_path, "tiny", 1)
    expected = reference_predict(version_dir, pixels[np.newaxis])[0]
    blast = float(expected[1])
    # same weights (seed), thresholds just below and just above this image's probability
    low = export_tiny_model(tmp_path, "low", 1, threshold=max(0.0, blast - 0.01))
    high = export_tiny_model(tmp_path, "high", 1, threshold=min(1.0, blast + 0.01))

    (answer,) = Classifier(version_dir).classify([BMP.read_bytes()])
    assert answer["probabilities"]["all"] == pytest.approx(blast, abs=1e-5)
    assert answer["blast_probability"] == answer["probabilities"]["all"]
    assert (answer["model"], answer["version"]) == ("tiny", 1)
    assert Classifier(low).classify([BMP.read_bytes()])[0]["label"] == "all"
    assert Classifier(high).classify([BMP.read_bytes()])[0]["label"] == "hem"


def _point(target: str, body: str, c: int, images_per_s: float, errors: int = 0) -> dict[str, Any]:
    return {
        "target": target, "body": body, "concurrency": c, "images_per_s": images_per_s,
        "errors": errors, "latency_ms": {"p50": 1000 * c / images_per_s, "p99": 2000.0},
    }  # fmt: skip


def test_peer_comparison_picks_the_best_error_free_peer() -> None:
    runs = [
        _point("service", "raw", 8, 150.0), _point("service", "multipart", 8, 120.0),
        _point("naive", "raw", 8, 15.0),
        _point("bentoml", "multipart", 8, 100.0), _point("litserve", "multipart", 8, 125.0),
        # fastest, but it failed requests: not a valid best
        _point("pytriton", "kserve", 8, 300.0, errors=3),
        _point("service", "raw", 64, 160.0), _point("pytriton", "kserve", 64, 200.0),
    ]  # fmt: skip
    results = {"meta": {"peers": ["bentoml", "litserve", "pytriton"]}, "runs": runs}
    comparison = report.compare_peers(results)
    c8, c64 = comparison["by_concurrency"]["8"], comparison["by_concurrency"]["64"]
    assert c8["best_peer"] == "litserve"
    assert c8["service_over_best_peer"] == pytest.approx(150 / 125)
    assert c8["service_multipart_over_best_peer"] == pytest.approx(120 / 125)
    assert c8["points"]["pytriton"]["body"] == "kserve"
    assert c64["best_peer"] == "pytriton"
    assert c64["service_over_best_peer"] == pytest.approx(0.8)
    assert "service_multipart_over_best_peer" not in c64  # not measured at 64

    results["peer_comparison"] = comparison
    lines = report._peer_section(results)
    row8 = next(line for line in lines if line.startswith("| 8 |"))
    assert "| litserve | 1.20x | 0.96x |" in row8
    assert "300.0 (27 / 2000, 3 errors)" in row8
    assert "pytriton [kserve]" in lines[-4]


def test_interleave_gives_every_server_a_turn_per_concurrency() -> None:
    from bench.run import interleave

    service = [("raw", 1), ("raw", 64), ("raw", 64), ("multipart", 1), ("multipart", 64)]
    peer = [("kserve", 1), ("kserve", 64), ("kserve", 64)]
    turns = interleave([service, peer], [1, 64, 64])
    assert turns == [
        [[("raw", 1), ("multipart", 1)], [("kserve", 1)]],
        [[("raw", 64), ("multipart", 64)], [("kserve", 64)]],
        [[("raw", 64)], [("kserve", 64)]],
    ]
    # a concurrency the rounds do not name still runs, last
    assert interleave([[("raw", 8)]], [1])[-1] == [[("raw", 8)]]


def test_repeated_points_compare_at_their_median() -> None:
    runs = [_point("service", "raw", 64, v) for v in (150.0, 170.0, 160.0)] + [
        _point("litserve", "multipart", 64, v) for v in (180.0, 140.0, 165.0)
    ]
    results = {"meta": {"peers": ["litserve"]}, "runs": runs}
    row = report.compare_peers(results)["by_concurrency"]["64"]
    assert row["points"]["service"]["images_per_s"] == 160.0
    assert row["points"]["litserve"]["repeats"] == 3
    assert row["service_over_best_peer"] == pytest.approx(160 / 165)
