"""Explanations: the version's ``explain`` signature, run outside the classification batcher.

Classification must never wait behind an explanation (a Grad-CAM pass costs a forward and a
backward pass per image), so explanations have their own small pool of slots
(``LEUK_EXPLAIN_CONCURRENCY``) and a request that finds every slot taken is refused with 503
``explain_busy`` instead of queueing. The signature is loaded from the version folder on
first use and kept; classification keeps using its own runtime.
"""

from __future__ import annotations

import base64
import io
import threading
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

GRID_SIZE = 16
OVERLAY_MAX_SIDE = 300


class Explainer:
    def __init__(self, dataplane: DataPlane, concurrency: int) -> None:
        self.dataplane = dataplane
        self._slots = anyio.CapacityLimiter(concurrency)
        self._functions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

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
        max_pixels = self.dataplane.settings.max_image_pixels
        results = []
        for index, payload in enumerate(payloads):
            try:
                image = decode_image(payload, max_pixels)
            except ServiceError as exc:
                if len(payloads) > 1:
                    exc.detail = f"Image {index}: {exc.detail}"
                raise
            results.append(self._explain_one(index, loaded, image))
        return results

    def _function(self, loaded: LoadedVersion) -> Any:
        with self._lock:
            if loaded.key not in self._functions:
                import tensorflow as tf

                path = self.dataplane.registry.store.version_dir(loaded.name, loaded.version)
                saved = tf.saved_model.load(str(path))
                signature = loaded.card.explain.signature if loaded.card.explain else "explain"
                # Keep the loaded object alive with its function (variables are weak refs).
                self._functions[loaded.key] = (saved, saved.signatures[signature])
            return self._functions[loaded.key][1]

    def _explain_one(
        self, index: int, loaded: LoadedVersion, image: DecodedImage
    ) -> ExplainedResult:
        import tensorflow as tf

        card = loaded.card
        assert card.explain is not None
        outputs = self._function(loaded)(images=tf.constant(image.pixels[None]))
        row = np.asarray(outputs[card.output.output_name].numpy()[0], dtype=np.float32)
        signed = np.asarray(outputs[card.explain.output_name].numpy()[0], dtype=np.float32)
        result = DataPlane._result(index, loaded, image, row)
        sign = 1.0 if result.label == card.positive_label else -1.0
        heat = np.maximum(sign * signed, 0.0)
        total = float(np.abs(signed).sum())
        mass = float(heat.sum())
        peak = float(heat.max())
        normalised = heat / peak if peak > 0 else heat
        cell = image.pixels.max(axis=-1) > card.input_checks.dark_level
        heatmap = Heatmap(
            method=card.explain.method,
            target_label=result.label,
            png_base64=overlay_png(image.pixels, normalised),
            grid=grid_of(normalised, GRID_SIZE),
            grid_size=GRID_SIZE,
            heat_on_cell=float(heat[cell].sum()) / mass if mass > 0 else None,
            spatial_evidence=mass / total if total > 0 else 0.0,
        )
        return ExplainedResult(**result.model_dump(), heatmap=heatmap)


def grid_of(heat: NDArray[np.float32], size: int) -> list[list[float]]:
    """Mean of ``heat`` over a size x size grid of equal image regions, rescaled to max 1."""
    rows = np.array_split(np.arange(heat.shape[0]), size)
    cols = np.array_split(np.arange(heat.shape[1]), size)
    grid = np.array([[heat[np.ix_(r, c)].mean() for c in cols] for r in rows], dtype=np.float64)
    peak = grid.max()
    grid = grid / peak if peak > 0 else grid
    return [[round(float(v), 4) for v in row] for row in grid]


def colormap(values: NDArray[np.float32]) -> NDArray[np.uint8]:
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


def overlay_png(pixels: NDArray[np.uint8], heat: NDArray[np.float32]) -> str:
    """The image with ``heat`` blended over it (more heat, more opaque), base64 PNG."""
    alpha = (0.65 * np.clip(heat, 0.0, 1.0))[..., None]
    blended = pixels.astype(np.float32) * (1 - alpha) + colormap(heat) * alpha
    picture = Image.fromarray(blended.astype(np.uint8))
    picture.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
