"""Server-side dynamic batching (app/batching.py) and batched == single results."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from app.batching import BATCH_TOLERANCE, Batcher
from app.errors import Overloaded, ShuttingDown
from app.imaging import decode_image
from app.registry import LoadedVersion, ModelRegistry
from app.settings import Settings
from app.store import ModelStore
from tests.app.conftest import CNMC_PNGS, serve
from tests.app.images import cell_like, encode

pytestmark = pytest.mark.anyio


class RecordingRuntime:
    """Wraps a real runtime and records the shape of every inference call."""

    def __init__(self, inner: object, delay: float = 0.0) -> None:
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []
        self.delay = delay
        self.fail = False

    def predict(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.shapes.append(images.shape)
        if self.fail:
            raise RuntimeError("model exploded")
        if self.delay:
            threading.Event().wait(self.delay)
        return self.inner.predict(images)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def tiny_version(tiny_store: Path) -> LoadedVersion:
    return ModelRegistry(ModelStore(tiny_store)).resolve("tiny")


def real_pixels() -> list[NDArray[np.uint8]]:
    return [decode_image(p.read_bytes(), 10**8).pixels for p in CNMC_PNGS]


def assert_within_tolerance(batched: NDArray[np.float32], singles: NDArray[np.float32]) -> None:
    """The guarantee that holds on every CPU: close, and the same label at any threshold
    further than the tolerance from the probability."""
    assert np.max(np.abs(batched - singles)) <= BATCH_TOLERANCE
    for threshold in np.linspace(0.05, 0.95, 19):
        far = np.abs(singles[:, 1] - threshold) > BATCH_TOLERANCE
        assert np.array_equal((batched[far, 1] >= threshold), (singles[far, 1] >= threshold))


def test_batched_rows_agree_with_single_rows(tiny_version: LoadedVersion) -> None:
    images = real_pixels() + [cell_like(seed) for seed in range(20)]
    runtime = tiny_version.runtime
    singles = np.concatenate([runtime.predict(image[None]) for image in images])
    for size in (2, 3, 5, 8, 16, 32):
        batched = np.concatenate(
            [runtime.predict(np.stack(images[i : i + size])) for i in range(0, len(images), size)]
        )
        assert_within_tolerance(batched, singles)


def test_tolerance_check_fails_on_a_real_drift(tiny_version: LoadedVersion) -> None:
    images = np.stack([cell_like(seed) for seed in range(4)])
    singles = np.concatenate([tiny_version.runtime.predict(image[None]) for image in images])
    with pytest.raises(AssertionError):
        assert_within_tolerance(singles + np.float32(2 * BATCH_TOLERANCE), singles)


async def test_lone_request_runs_at_once_and_concurrent_requests_batch(
    tiny_version: LoadedVersion,
) -> None:
    recorder = RecordingRuntime(tiny_version.runtime, delay=0.02)
    model = replace(tiny_version, runtime=recorder)
    observed: list[tuple[int, list[float]]] = []
    batcher = Batcher(
        max_batch_size=8,
        max_batch_wait_s=0.5,
        max_queue=100,
        observer=lambda _m, size, waits, _s: observed.append((size, waits)),
    )
    batcher.start()
    try:
        image = cell_like(0)
        (alone,) = await batcher.predict(model, [image])
        # A lone request does not wait for company (max_batch_wait is 0.5 s here; the bound
        # leaves room for a busy machine's scheduling and still fails if it waited it out).
        assert observed[0][0] == 1 and observed[0][1][0] < 0.25
        images = [cell_like(seed) for seed in range(20)]
        rows = await batcher.predict(model, images)
    finally:
        batcher.stop()
    sizes = [size for size, _ in observed[1:]]
    assert sum(sizes) == 20
    assert max(sizes) > 1 and max(sizes) <= 8
    expected = np.concatenate([tiny_version.runtime.predict(img[None]) for img in images])
    assert_within_tolerance(np.stack(rows), expected)
    # A lone request runs as a batch of one, never padded: same call shape, same bits.
    assert recorder.shapes[0][0] == 1
    assert np.array_equal(alone, tiny_version.runtime.predict(image[None])[0])


async def test_batches_never_mix_shapes_or_models(tiny_store: Path) -> None:
    registry = ModelRegistry(ModelStore(tiny_store))
    tiny = registry.resolve("tiny")
    other = registry.resolve("other")
    recorder_a = RecordingRuntime(tiny.runtime, delay=0.01)
    recorder_b = RecordingRuntime(other.runtime, delay=0.01)
    model_a, model_b = replace(tiny, runtime=recorder_a), replace(other, runtime=recorder_b)
    batcher = Batcher(max_batch_size=16, max_batch_wait_s=0.005, max_queue=100)
    batcher.start()
    try:
        small = [cell_like(s, size=200) for s in range(6)]
        large = [cell_like(s, size=450) for s in range(6)]
        async with anyio.create_task_group() as tasks:
            for image in small + large:
                tasks.start_soon(batcher.predict, model_a, [image])
                tasks.start_soon(batcher.predict, model_b, [image])
    finally:
        batcher.stop()
    for shape in recorder_a.shapes + recorder_b.shapes:
        assert shape[1:] in ((200, 200, 3), (450, 450, 3))
    assert sum(s[0] for s in recorder_a.shapes) == 12
    assert sum(s[0] for s in recorder_b.shapes) == 12


async def test_model_failure_reaches_every_waiting_request(tiny_version: LoadedVersion) -> None:
    recorder = RecordingRuntime(tiny_version.runtime)
    recorder.fail = True
    batcher = Batcher(max_batch_size=4, max_batch_wait_s=0.0, max_queue=10)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.predict(replace(tiny_version, runtime=recorder), [cell_like(1)] * 3)
        recorder.fail = False
        rows = await batcher.predict(replace(tiny_version, runtime=recorder), [cell_like(1)])
        assert rows[0].shape == (2,)  # the worker survived the failure
    finally:
        batcher.stop()


def test_full_queue_is_refused(tiny_version: LoadedVersion) -> None:
    batcher = Batcher(max_batch_size=4, max_batch_wait_s=0.0, max_queue=2)  # not started
    batcher.submit(tiny_version, [cell_like(1)])
    batcher.submit(tiny_version, [cell_like(2)])
    with pytest.raises(Overloaded):
        batcher.submit(tiny_version, [cell_like(3)])
    batcher.stop()


def test_a_request_is_admitted_whole_or_not_at_all(tiny_version: LoadedVersion) -> None:
    batcher = Batcher(max_batch_size=4, max_batch_wait_s=0.0, max_queue=5)  # not started
    batcher.submit(tiny_version, [cell_like(1)] * 3)
    with pytest.raises(Overloaded):
        batcher.submit(tiny_version, [cell_like(2)] * 3)  # 2 would fit: none is queued
    assert batcher.queue_depth() == 3
    batcher.submit(tiny_version, [cell_like(3)] * 2)  # exactly fills the queue
    assert batcher.queue_depth() == 5
    batcher.stop()


async def test_images_still_queued_at_stop_get_shutting_down(tiny_version: LoadedVersion) -> None:
    batcher = Batcher(max_batch_size=4, max_batch_wait_s=0.0, max_queue=5)  # not started
    (future,) = batcher.submit(tiny_version, [cell_like(1)])
    batcher.stop()
    with pytest.raises(ShuttingDown):
        future.result(timeout=5)
    with pytest.raises(ShuttingDown):
        batcher.submit(tiny_version, [cell_like(2)])


async def test_concurrent_http_requests_equal_sequential_ones(
    make_settings: Callable[..., Settings],
) -> None:
    payloads = [p.read_bytes() for p in CNMC_PNGS] + [
        encode(cell_like(seed), "PNG") for seed in range(20)
    ]
    headers = {"content-type": "image/png"}
    # Once requests queue up, a worker waits up to 50 ms for more: batching then happens even
    # on a busy machine (5 ms could pass before the next request was decoded). Equality with
    # the sequential results is the point, and must hold for any wait.
    async with serve(make_settings(max_batch_size=8, max_batch_wait_ms=50)) as client:

        async def classify(payload: bytes) -> list[float]:
            response = await client.post("/v1/classify", content=payload, headers=headers)
            assert response.status_code == 200
            probabilities = response.json()["results"][0]["probabilities"]
            return [probabilities["hem"], probabilities["all"]]

        sequential = [await classify(p) for p in payloads]
        concurrent: list[list[float]] = [[]] * len(payloads)

        async def run(i: int) -> None:
            concurrent[i] = await classify(payloads[i])

        async with anyio.create_task_group() as tasks:
            for i in range(len(payloads)):
                tasks.start_soon(run, i)
        metrics = (await client.get("/metrics")).text
    assert_within_tolerance(
        np.asarray(concurrent, dtype=np.float32), np.asarray(sequential, dtype=np.float32)
    )
    batched = _batches_larger_than_one(metrics)
    assert batched > 0, "concurrent requests should have been batched"


def _batches_larger_than_one(metrics: str) -> float:
    count = le1 = 0.0
    for line in metrics.splitlines():
        if line.startswith("leuk_inference_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
        if line.startswith("leuk_inference_batch_size_bucket") and 'le="1.0"' in line:
            le1 += float(line.rsplit(" ", 1)[1])
    return count - le1


async def test_multi_image_request_equals_single_requests(client: httpx.AsyncClient) -> None:
    payloads = [p.read_bytes() for p in CNMC_PNGS]
    headers = {"content-type": "image/png"}
    singles = [
        (await client.post("/v1/classify", content=p, headers=headers)).json()["results"][0]
        for p in payloads
    ]
    files = [("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(payloads)]
    together = (await client.post("/v1/classify", files=files)).json()["results"]

    def rows(results: list[dict[str, Any]]) -> NDArray[np.float32]:
        return np.asarray(
            [[r["probabilities"]["hem"], r["probabilities"]["all"]] for r in results],
            dtype=np.float32,
        )

    assert_within_tolerance(rows(together), rows(singles))
    assert [r["label"] for r in together] == [r["label"] for r in singles]


class BatchDependentRuntime(RecordingRuntime):
    """A stand-in for what oneDNN does to some real models (the improved CNN): the result of
    a row changes in the last bits with the batch size. Reproduced exactly here so the test
    does not depend on which CPU kernels the machine picks."""

    def predict(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        rows = super().predict(images)
        shifted: NDArray[np.float32] = rows + np.float32(1e-7) * (images.shape[0] - 1)
        return shifted


async def _alone_then_concurrently(
    model: LoadedVersion, images: list[NDArray[np.uint8]], exact: bool
) -> tuple[NDArray[np.float32], dict[int, NDArray[np.float32]], list[int]]:
    """Through a 2-worker batcher: images[0] alone, then every image as its own concurrent
    request. Returns the lone result, the concurrent results and the batch sizes observed."""
    sizes: list[int] = []
    batcher = Batcher(
        max_batch_size=8,
        max_batch_wait_s=0.01,
        max_queue=100,
        observer=lambda _m, size, _w, _s: sizes.append(size),
        workers=2,
        exact=exact,
    )
    batcher.start()
    try:
        (alone,) = await batcher.predict(model, [images[0]])
        results: dict[int, NDArray[np.float32]] = {}

        async def one(i: int) -> None:
            results[i] = (await batcher.predict(model, [images[i]]))[0]

        async with anyio.create_task_group() as tasks:
            for i in range(len(images)):
                tasks.start_soon(one, i)
    finally:
        batcher.stop()
    return alone, results, sizes


async def test_exact_batching_runs_one_image_per_call(tiny_version: LoadedVersion) -> None:
    runtime = BatchDependentRuntime(tiny_version.runtime, delay=0.01)
    model = replace(tiny_version, runtime=runtime)
    images = [cell_like(seed) for seed in range(12)]
    alone, results, sizes = await _alone_then_concurrently(model, images, exact=True)
    assert sizes == [1] * (1 + len(images))
    assert np.array_equal(alone, tiny_version.runtime.predict(images[0][None])[0])
    assert all(shape[0] == 1 for shape in runtime.shapes)
    for i, image in enumerate(images):
        assert np.array_equal(results[i], tiny_version.runtime.predict(image[None])[0])


async def test_stacked_batching_does_stack(tiny_version: LoadedVersion) -> None:
    """The counterpart of the exact test: the same load, stacked, forms batches > 1."""
    runtime = RecordingRuntime(tiny_version.runtime, delay=0.01)
    images = [cell_like(seed) for seed in range(12)]
    _, results, sizes = await _alone_then_concurrently(
        replace(tiny_version, runtime=runtime), images, exact=False
    )
    assert sizes[0] == 1 and max(sizes) > 1
    singles = np.concatenate([tiny_version.runtime.predict(image[None]) for image in images])
    assert_within_tolerance(np.stack([results[i] for i in range(len(images))]), singles)


async def test_health_reports_batching_mode(client: httpx.AsyncClient) -> None:
    versions = (await client.get("/health")).json()["models"]["tiny"]["versions"]
    assert versions["2"]["batching"] == "stacked"
    assert (await client.get("/model-info")).json()["batching"] == "stacked"


async def test_exact_batching_is_reported(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(exact_batching=True)) as client:
        versions = (await client.get("/health")).json()["models"]["tiny"]["versions"]
        assert versions["2"]["batching"] == "per_image"


async def test_tensorflow_never_runs_on_the_event_loop(client: httpx.AsyncClient) -> None:
    loaded = client.app.state.dataplane.lifecycle.served_default()  # type: ignore[attr-defined]
    threads: list[str] = []
    inner = loaded.runtime

    class ThreadRecorder:
        def predict(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
            threads.append(threading.current_thread().name)
            result: NDArray[np.float32] = inner.predict(images)
            return result

    loaded.runtime = ThreadRecorder()
    try:
        payloads = [p.read_bytes() for p in CNMC_PNGS[:6]]
        async with anyio.create_task_group() as tasks:
            for payload in payloads:
                tasks.start_soon(
                    lambda p: client.post(
                        "/v1/classify", content=p, headers={"content-type": "image/png"}
                    ),
                    payload,
                )
    finally:
        loaded.runtime = inner
    assert threads and all(name.startswith("inference-") for name in threads)
    assert threading.current_thread().name not in threads
