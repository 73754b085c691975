"""Explanations: the version's ``explain`` signature, run apart from classification.

Classification must not wait behind an explanation (Grad-CAM costs a forward and a backward
pass per image, Integrated Gradients 16 of each). Explanations therefore run in worker
processes of their own (``LEUK_EXPLAIN_CONCURRENCY`` of them, started on first use) at the
lowest CPU priority (nice 19) with one TensorFlow thread each: the kernel gives classification
the cores whenever it wants them, which threads sharing the service's TensorFlow thread pool
could not. A request that finds every worker busy is refused with 503 ``explain_busy``
instead of queueing. Each worker loads the version's SavedModel itself and keeps it.
"""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from app.dataplane import DataPlane
from app.errors import ExplainBusy, ExplainUnsupported, ServiceError
from app.imaging import DecodedImage, decode_image
from app.registry import LoadedVersion
from app.schemas import ExplainedResult, ExplainResponse, Heatmap
from contract.card import ModelCard

GRID_SIZE = 16
OVERLAY_MAX_SIDE = 300


class Explainer:
    def __init__(self, dataplane: DataPlane, concurrency: int) -> None:
        self.dataplane = dataplane
        self._concurrency = concurrency
        self._slots = anyio.CapacityLimiter(concurrency)
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def explain(
        self, loaded: LoadedVersion, payloads: list[bytes], request_id: str
    ) -> ExplainResponse:
        if loaded.card.explain is None:
            raise ExplainUnsupported(
                f"{loaded.name} version {loaded.version} has no 'explain' signature."
            )
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            raise ExplainBusy() from None
        try:
            results = await anyio.to_thread.run_sync(self._run, loaded, payloads)
        finally:
            self._slots.release()
        return ExplainResponse(
            request_id=request_id,
            model=loaded.name,
            version=loaded.version,
            digest=loaded.card.digest,
            results=results,
        )

    def _run(self, loaded: LoadedVersion, payloads: list[bytes]) -> list[ExplainedResult]:
        results = []
        for index, payload in enumerate(payloads):
            try:
                results.append(self._explain_one(index, loaded, payload))
            except ServiceError as exc:
                if len(payloads) > 1:
                    exc.detail = f"Image {index}: {exc.detail}"
                raise
        return results

    def _explain_one(self, index: int, loaded: LoadedVersion, payload: bytes) -> ExplainedResult:
        """Decode, explain and draw one image in a worker; only the answer comes back."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._concurrency,
                mp_context=multiprocessing.get_context("spawn"),  # no forked TensorFlow state
                initializer=_start_worker,
            )
        path = str(self.dataplane.registry.store.version_dir(loaded.name, loaded.version))
        max_pixels = self.dataplane.settings.max_image_pixels
        outcome = self._pool.submit(
            _explain_in_worker, path, loaded.card, payload, max_pixels
        ).result()
        if isinstance(outcome, _Refused):
            raise outcome.error(outcome.detail)
        image, row, heatmap = outcome
        result = DataPlane._result(index, loaded, image, row)
        return ExplainedResult(**result.model_dump(), heatmap=heatmap)


@dataclass(frozen=True)
class _Refused:
    """A ServiceError raised in a worker, carried back by class and detail."""

    error: type[ServiceError]
    detail: str


def heatmap_of(
    card: ModelCard,
    pixels: NDArray[np.uint8],
    row: NDArray[np.float32],
    signed: NDArray[np.float32],
) -> Heatmap:
    """The predicted label's map (the positive part of +map or -map) drawn and summarised."""
    assert card.explain is not None
    predicted_positive = bool(row[card.positive_index] >= card.threshold)
    negative = next(label for label in card.labels if label != card.positive_label)
    heat = np.maximum(signed if predicted_positive else -signed, 0.0)
    total = float(np.abs(signed).sum())
    mass = float(heat.sum())
    peak = float(heat.max())
    normalised = heat / peak if peak > 0 else heat
    cell = pixels.max(axis=-1) > card.input_checks.dark_level
    return Heatmap(
        method=card.explain.method,
        target_label=card.positive_label if predicted_positive else negative,
        png_base64=overlay_png(pixels, normalised),
        grid=grid_of(normalised, GRID_SIZE),
        grid_size=GRID_SIZE,
        heat_on_cell=float(heat[cell].sum()) / mass if mass > 0 else None,
        spatial_evidence=mass / total if total > 0 else 0.0,
    )


def grid_of(heat: NDArray[np.floating], size: int) -> list[list[float]]:
    """Mean of ``heat`` over a size x size grid of equal image regions, rescaled to max 1."""
    rows = np.array_split(np.arange(heat.shape[0]), size)
    cols = np.array_split(np.arange(heat.shape[1]), size)
    grid = np.array([[heat[np.ix_(r, c)].mean() for c in cols] for r in rows], dtype=np.float64)
    peak = grid.max()
    grid = grid / peak if peak > 0 else grid
    return [[round(float(v), 4) for v in row] for row in grid]


def colormap(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """[H, W] in [0, 1] -> [H, W, 3]: dark blue through red to yellow (a perceptually
    ordered ramp, readable by most colour-blind viewers)."""
    stops = np.array(
        [[0, 0, 80], [120, 0, 160], [220, 40, 80], [255, 140, 0], [255, 240, 80]], np.float32
    )
    position = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    fraction = (position - low)[..., None]
    mixed = stops[low] * (1 - fraction) + stops[low + 1] * fraction
    return np.asarray(mixed, dtype=np.uint8)


def overlay_png(pixels: NDArray[np.uint8], heat: NDArray[np.floating]) -> str:
    """The image with ``heat`` blended over it (more heat, more opaque), base64 PNG."""
    alpha = (0.65 * np.clip(heat, 0.0, 1.0))[..., None]
    blended = pixels.astype(np.float32) * (1 - alpha) + colormap(heat) * alpha
    picture = Image.fromarray(blended.astype(np.uint8))
    picture.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- worker processes ------------------------------------------------------------------------
_signatures: dict[str, Any] = {}


def _start_worker() -> None:
    os.nice(19)  # classification, in the service's process, always goes first
    _exit_with_parent()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _explain_in_worker(
    path: str, card: ModelCard, payload: bytes, max_pixels: int
) -> tuple[DecodedImage, NDArray[np.float32], Heatmap] | _Refused:
    import tensorflow as tf

    assert card.explain is not None
    try:
        image = decode_image(payload, max_pixels)
    except ServiceError as exc:
        return _Refused(type(exc), exc.detail)
    if path not in _signatures:
        saved = tf.saved_model.load(path)
        # Keep the loaded object alive with its function (variables are weak references).
        _signatures[path] = (saved, saved.signatures[card.explain.signature])
    outputs = _signatures[path][1](images=tf.constant(image.pixels[None]))
    row = np.asarray(outputs[card.output.output_name].numpy()[0], dtype=np.float32)
    if card.ood_check is not None:  # the row the service's runtime returns: score last
        score = outputs[card.ood_check.output_name].numpy()[0]
        row = np.append(row, np.float32(score)).astype(np.float32)
    signed = np.asarray(outputs[card.explain.output_name].numpy()[0], dtype=np.float32)
    heatmap = heatmap_of(card, image.pixels, row, signed)
    # The pixels stay here: the service needs only the input check and the answer.
    return replace(image, pixels=np.zeros((0, 0, 3), np.uint8)), row, heatmap


def _exit_with_parent() -> None:
    """Linux: SIGTERM this worker when the service process dies, however it dies, so a killed
    service leaves no worker behind."""
    import ctypes
    import ctypes.util
    import signal

    name = ctypes.util.find_library("c")
    if name:
        pr_set_pdeathsig = 1
        ctypes.CDLL(name).prctl(pr_set_pdeathsig, signal.SIGTERM)
