"""Server-side dynamic batching: where batches form and where TensorFlow runs.

A few dedicated worker threads (``LEUK_INFERENCE_WORKERS``) make every inference call;
the event loop never does. Requests enqueue single images with a future and await it. A
worker takes the oldest image and every queued image with the same model version and
image shape (up to ``max_batch_size``), so a lone request runs at once, while requests
that arrive while the workers are busy are served together. If others were already
waiting (the model is under load) and the batch is not full, the worker waits up to
``max_batch_wait`` for more to arrive.

Batched vs single: CPU kernels (oneDNN) may sum in a batch-size-dependent order, and which
order depends on the CPU (AVX2 and AVX-512 machines differ), so a row's probabilities can
change in the last float32 bits with the size of the batch it ran in. What holds on every
CPU: a batched row is within ``BATCH_TOLERANCE`` of the same image run alone (measured by
``python -m scripts.batch_numerics``: at most ~1.2e-7 on the committed models, AVX-512 and
AVX2 kernels), so its label is the same unless its probability lies within that distance
of the threshold. A lone image always runs as a batch of one, never padded. For results
that are bit-identical to single-image calls whatever arrives together, set
``LEUK_EXACT_BATCHING=true``: every image then runs alone (batch size 1), on every CPU, at
the cost of throughput under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from app.errors import Overloaded, ShuttingDown
from app.registry import LoadedVersion

BATCH_TOLERANCE = 1e-5
"""Largest |batched - single| probability difference the service guarantees (~80x the
largest difference measured on AVX-512 and AVX2 kernels, see the module docstring)."""

BatchObserver = Callable[[LoadedVersion, int, list[float], float], None]
"""Called after each batch with (version, batch size, queue waits in s, inference seconds)."""


@dataclass
class _Item:
    model: LoadedVersion
    pixels: NDArray[np.uint8]
    future: Future[NDArray[np.float32]]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple[str, int, tuple[int, ...]]:
        return (self.model.name, self.model.version, self.pixels.shape)


def _stack(batch: list[_Item]) -> NDArray[np.uint8]:
    if len(batch) == 1:
        return batch[0].pixels[None]
    return np.stack([item.pixels for item in batch])


class Batcher:
    def __init__(
        self,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        workers: int = 1,
        exact: bool = False,
    ) -> None:
        # exact: one image per call, so results are bit-identical to single-image calls.
        self.max_batch_size = 1 if exact else max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.max_queue = max_queue
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._workers = max(1, workers)
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"inference-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        with self._cond:
            while self._queue:
                future = self._queue.popleft().future
                if future.set_running_or_notify_cancel():
                    future.set_exception(ShuttingDown())

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads) and not self._stopping

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    # --- submitting --------------------------------------------------------------------
    def submit(
        self, model: LoadedVersion, images: list[NDArray[np.uint8]]
    ) -> list[Future[NDArray[np.float32]]]:
        """Enqueue a request's images, all or none; each future resolves to its row.

        A request is admitted whole or refused whole (503 before any of its images runs):
        a partly admitted request would spend model time on images whose answer is an error.
        """
        futures: list[Future[NDArray[np.float32]]] = [Future() for _ in images]
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if len(self._queue) + len(images) > self.max_queue:
                raise Overloaded()
            self._queue.extend(_Item(model, p, f) for p, f in zip(images, futures, strict=True))
            self._cond.notify(len(images))
        return futures

    async def predict(
        self, model: LoadedVersion, images: list[NDArray[np.uint8]]
    ) -> list[NDArray[np.float32]]:
        """Probabilities for each image (awaited without blocking the event loop).

        Cancelling the caller (its client went away) cancels the images still queued:
        ``wrap_future`` passes the cancellation on, and the workers skip cancelled items.
        """
        futures = self.submit(model, images)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    # --- the worker --------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue.popleft()
            batch = [first]
            others_waiting = bool(self._queue)
            self._collect(first.key, batch)
            if others_waiting and len(batch) < self.max_batch_size and self.max_batch_wait_s > 0:
                deadline = time.perf_counter() + self.max_batch_wait_s
                while len(batch) < self.max_batch_size and not self._stopping:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    self._collect(first.key, batch)
            return batch

    def _collect(self, key: tuple[str, int, tuple[int, ...]], batch: list[_Item]) -> None:
        """Move queued items with ``key`` into ``batch`` (caller holds the lock)."""
        if not self._queue or len(batch) >= self.max_batch_size:
            return
        keep: deque[_Item] = deque()
        while self._queue:
            item = self._queue.popleft()
            if len(batch) < self.max_batch_size and item.key == key:
                batch.append(item)
            else:
                keep.append(item)
        self._queue = keep
        if keep:  # other shapes or models are waiting: wake an idle worker for them
            self._cond.notify()

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.perf_counter()
            waits = [started - item.enqueued for item in batch]
            model = batch[0].model
            try:
                probabilities = model.runtime.predict(_stack(batch))
            except BaseException as exc:  # deliver every failure to the waiting requests
                for item in batch:
                    item.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            if self._observer is not None:  # before the results: metrics never lag responses
                with contextlib.suppress(Exception):  # metrics must never fail a request
                    self._observer(model, len(batch), waits, seconds)
            for row, item in enumerate(batch):
                item.future.set_result(probabilities[row])
