"""Memory bounds: the decoding budget (app/memory.py) and the peak RSS of the largest request."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from app.errors import DecodeMemoryBusy, RequestTooLargeDecoded
from app.memory import DecodeBudget
from app.settings import Settings
from tests.app.images import cell_like, encode
from tests.app.live_service import running_process

# Peak RSS the largest requests the default limits allow may add to a ready server (README,
# "Memory bounds"): measured 192-355 MB with the tiny test model; without the limits, the
# two 25-megapixel PNGs alone added 1,220 MB.
RSS_BOUND_MB = 600


def test_budget_refuses_when_full_and_gives_everything_back() -> None:
    budget = DecodeBudget(capacity=1000)
    first, second = budget.reservation(), budget.reservation()
    first.take(600)
    with pytest.raises(DecodeMemoryBusy) as busy:
        second.take(500)
    assert busy.value.headers == {"Retry-After": "1"}
    second.take(400)
    assert budget.in_flight == 1000
    first.give_back(100)
    second.take(100)
    with pytest.raises(RequestTooLargeDecoded):  # could never fit, even alone: not a retry
        budget.reservation().take(1001)
    first.release_all()
    second.release_all()
    assert budget.in_flight == 0 and first.held == second.held == 0


def _largest_request_images() -> list[tuple[str, list[bytes]]]:
    """The largest requests the default limits allow (LEUK_MAX_REQUEST_PIXELS = 50 M):
    two images at the per-image limit (25 M pixels each: the largest decode buffers), 64
    (LEUK_MAX_FILES) of 880x880 (each decoded at full size, then downscaled), and 64 of
    450x450 (the largest kept at full size and batched as they are)."""
    settings = Settings()
    side = int(settings.max_image_pixels**0.5)

    def cell_on_canvas(canvas: int) -> bytes:
        pixels = np.zeros((canvas, canvas, 3), dtype=np.uint8)
        start = (canvas - 450) // 2
        pixels[start : start + 450, start : start + 450] = cell_like(1)
        return encode(pixels, "PNG", compress_level=1)

    assert 2 * side * side <= settings.max_request_pixels
    assert settings.max_files * 880 * 880 <= settings.max_request_pixels
    return [
        (f"2 x {side}x{side}", [cell_on_canvas(side)] * 2),
        ("64 x 880x880", [cell_on_canvas(880)] * settings.max_files),
        ("64 x 450x450", [cell_on_canvas(450)] * settings.max_files),
    ]


def _rss_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak since start) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_largest_allowed_request_keeps_peak_rss_bounded(tiny_store: Path) -> None:
    requests = _largest_request_images()
    growth: dict[str, float] = {}
    with (
        running_process(tiny_store) as (url, process),
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        ready_rss = _rss_mb(process.pid, "VmRSS")
        for name, images in requests:
            files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
            response = http.post("/v1/classify", files=files)
            assert response.status_code == 200, response.text
            growth[name] = _rss_mb(process.pid, "VmHWM") - ready_rss
    # Peak RSS over the ready server's RSS, after each request in turn (cumulative peak).
    print("peak RSS growth (MB):", {k: round(v) for k, v in growth.items()})
    assert max(growth.values()) < RSS_BOUND_MB, growth
