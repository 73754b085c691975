"""Request logic, independent of HTTP: resolve the model, decode, batch, shape results."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from app.batching import Batcher
from app.errors import ModelNotFound, NotReady, RequestTooLargeDecoded, ServiceError
from app.imaging import DecodedImage, OpenedImage, decode_opened, open_image
from app.input_checks import check_input
from app.lifecycle import Lifecycle, State
from app.log import limit_warning_logs
from app.memory import DecodeBudget, Reservation
from app.metrics import Metrics
from app.registry import LoadedVersion, ModelRegistry
from app.schemas import (
    ClassifyResponse,
    HealthSummary,
    ImageResult,
    InputCheckOut,
    ModelInfo,
    Summary,
)
from app.settings import Settings
from contract.card import InputChecks

_T = TypeVar("_T")
_R = TypeVar("_R")

OOD_MEANING = (
    "out_of_distribution=true means the image does not look like what the model was "
    "trained and validated on (a C-NMC-style segmented single white cell on a black "
    "background, 450x450): its size is not near 450x450 (too_small, unexpected_size: the "
    "cell would be seen at a scale the model never saw), the border is not black "
    "background, or no cell / too much foreground is visible; and, for a version whose "
    "card has an ood_check, the model's own out-of-distribution score is above the card's "
    "threshold (the card's reason, e.g. unfamiliar_cell: a cell unlike those it was trained "
    "on, such as another white-cell type). The label and probabilities "
    "are still reported but are not validated for such images and must not be used as a "
    "result; summaries report them separately."
)


def _check_all(
    pixels: list[NDArray[np.uint8]],
    rule: InputChecks,
    on_decoded: Callable[[Sequence[DecodedImage]], None] | None,
) -> list[DecodedImage]:
    decoded = [
        DecodedImage(image, "pixels", "RGB", check_input(image, image.shape[1::-1], rule))
        for image in pixels
    ]
    if on_decoded is not None:
        on_decoded(decoded)
    return decoded


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and
    keeps its coverage for the small counts and extreme shares of one sample's cells."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return (round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6))


class DataPlane:
    """Resolve the model, decode, batch, shape the result. Readiness is the lifecycle's
    (app/lifecycle.py); which version answers is the registry's (``resolve``)."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        lifecycle: Lifecycle,
        batcher: Batcher,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.lifecycle = lifecycle
        self.batcher = batcher
        self.metrics = metrics
        self._decode_limiter = anyio.CapacityLimiter(settings.decode_threads)
        self.decode_budget = DecodeBudget(settings.max_decode_bytes)

    def model_ready(self, name: str) -> LoadedVersion:
        """The loaded version serving ``name`` by default, without loading anything."""
        loaded = self.registry.loaded(name)
        if loaded is not None:
            return loaded
        if name not in self.registry.store.models():
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        raise NotReady(f"Model {name!r} is not loaded (it loads on its first request).")

    # --- classify ----------------------------------------------------------------------
    async def resolve(self, model: str | None, version: int | None) -> LoadedVersion:
        """The loaded version that answers; a version not loaded yet is loaded in a thread."""
        if model is None:
            return self.lifecycle.served_default()
        loaded = self.registry.loaded(model, version)
        if loaded is not None:
            return loaded
        loaded = await anyio.to_thread.run_sync(self.registry.resolve, model, version)
        default = self.registry.loaded(self.lifecycle.default_model or "")
        self.metrics.observe_loaded(loaded, is_default=loaded is default)
        return loaded

    async def classify(
        self,
        loaded: LoadedVersion,
        payloads: list[bytes],
        request_id: str,
        on_decoded: Callable[[Sequence[DecodedImage]], None] | None = None,
    ) -> ClassifyResponse:
        reservation = self.decode_budget.reservation()
        try:
            decoded = await anyio.to_thread.run_sync(
                self._decode_all,
                payloads,
                loaded.card.input_checks,
                reservation,
                on_decoded,
                limiter=self._decode_limiter,
            )
            return await self._classify_decoded(loaded, decoded, request_id)
        finally:
            reservation.release_all()

    async def classify_pixels(
        self,
        loaded: LoadedVersion,
        pixels: list[NDArray[np.uint8]],
        request_id: str,
        on_decoded: Callable[[Sequence[DecodedImage]], None] | None = None,
    ) -> ClassifyResponse:
        """Already-decoded RGB images ([H, W, 3] uint8, e.g. the Open Inference Protocol's
        UINT8 input): the same input checks, batching and results as ``classify``."""
        decoded = await anyio.to_thread.run_sync(
            _check_all, pixels, loaded.card.input_checks, on_decoded, limiter=self._decode_limiter
        )
        return await self._classify_decoded(loaded, decoded, request_id)

    async def _classify_decoded(
        self, loaded: LoadedVersion, decoded: list[DecodedImage], request_id: str
    ) -> ClassifyResponse:
        rows = await self.batcher.predict(loaded, [image.pixels for image in decoded])
        results = [
            self._result(i, loaded, image, row)
            for i, (image, row) in enumerate(zip(decoded, rows, strict=True))
        ]
        for result in results:
            self.metrics.images.labels(loaded.name, str(loaded.version), result.label).inc()
            if result.out_of_distribution:
                self.metrics.ood.labels(loaded.name, str(loaded.version)).inc()
        return ClassifyResponse(
            request_id=request_id,
            model=loaded.name,
            version=loaded.version,
            results=results,
            summary=self._summary(loaded, results) if len(results) > 1 else None,
        )

    def _decode_all(
        self,
        payloads: list[bytes],
        rule: InputChecks,
        reservation: Reservation,
        on_decoded: Callable[[Sequence[DecodedImage]], None] | None = None,
    ) -> list[DecodedImage]:
        """Every header first (per-image and per-request pixel limits before any decoding),
        then one image at a time inside the memory budget. Runs in a worker thread, and so
        does ``on_decoded`` (the audit trail hashes the uploads there, off the event loop)."""
        with limit_warning_logs():
            opened = self._each(
                payloads, lambda p: open_image(p, self.settings.max_image_pixels, rule)
            )
            declared = sum(image.declared_pixels for image in opened)
            if declared > self.settings.max_request_pixels:
                raise RequestTooLargeDecoded(
                    f"The images have {declared} pixels together; the limit is "
                    f"{self.settings.max_request_pixels} per request."
                )
            decoded = self._each(
                opened, lambda image: self._decode_in_budget(image, rule, reservation)
            )
        if on_decoded is not None:
            on_decoded(decoded)
        return decoded

    @staticmethod
    def _decode_in_budget(
        image: OpenedImage, rule: InputChecks, reservation: Reservation
    ) -> DecodedImage:
        reservation.take(image.decode_bytes + image.kept_bytes)
        try:
            return decode_opened(image, rule)
        finally:
            reservation.give_back(image.decode_bytes)

    @staticmethod
    def _each(items: list[_T], step: Callable[[_T], _R]) -> list[_R]:
        """``step`` on each item; an error names the image's index when there are several."""
        out = []
        for index, item in enumerate(items):
            try:
                out.append(step(item))
            except ServiceError as exc:
                if len(items) > 1:
                    exc.detail = f"Image {index}: {exc.detail}"
                raise
        return out

    @staticmethod
    def _result(
        index: int, model: LoadedVersion, image: DecodedImage, row: np.ndarray
    ) -> ImageResult:
        card = model.card
        n_labels = len(card.labels)
        probabilities = {
            label: float(p) for label, p in zip(card.labels, row[:n_labels], strict=True)
        }
        positive = probabilities[card.positive_label]
        negative = next(label for label in card.labels if label != card.positive_label)
        label = card.positive_label if positive >= card.threshold else negative
        check = image.check
        reasons = list(check.reasons)
        ood_score = None
        if card.ood_check is not None:
            ood_score = float(row[n_labels])
            # Written so that NaN flags too: a score that cannot be judged is not a pass.
            if not ood_score <= card.ood_check.threshold:
                reasons.append(card.ood_check.reason)
        out_of_distribution = bool(reasons)
        warnings = list(check.warnings)
        if out_of_distribution:
            warnings.insert(0, "out_of_distribution: " + ", ".join(reasons))
        return ImageResult(
            index=index,
            label=label,
            label_description=card.label_descriptions.get(label, label),
            probabilities=probabilities,
            blast_probability=positive,
            threshold=card.threshold,
            model=model.name,
            version=model.version,
            out_of_distribution=out_of_distribution,
            ood_score=ood_score,
            input_check=InputCheckOut(
                out_of_distribution=out_of_distribution,
                reasons=reasons,
                border_dark_fraction=check.border_dark_fraction,
                foreground_fraction=check.foreground_fraction,
            ),
            warnings=warnings,
        )

    @staticmethod
    def _summary(model: LoadedVersion, results: list[ImageResult]) -> Summary:
        positive = model.card.positive_label
        counts = {label: 0 for label in model.card.labels}
        for result in results:
            counts[result.label] += 1
        in_dist = [r for r in results if not r.out_of_distribution]
        return Summary(
            n_images=len(results),
            counts=counts,
            blast_fraction=counts[positive] / len(results),
            n_out_of_distribution=len(results) - len(in_dist),
            blast_fraction_in_distribution=(
                sum(r.label == positive for r in in_dist) / len(in_dist) if in_dist else None
            ),
            blast_fraction_ci95=(
                wilson_interval(sum(r.label == positive for r in in_dist), len(in_dist))
                if in_dist
                else None
            ),
        )

    # --- health and info ---------------------------------------------------------------
    def health(self) -> HealthSummary:
        state, reason = self.lifecycle.status()
        ready = state in (State.READY, State.DEGRADED)
        default = self.lifecycle.default_model
        loaded = self.registry.loaded(default) if default else None
        return HealthSummary(
            status="ready" if ready else "not_ready",
            state=state.value,
            ready=ready,
            reason=reason,
            default_model=default,
            default_version=loaded.version if loaded else None,
            uptime_seconds=round(time.monotonic() - self.lifecycle.started_at, 3),
            queue_depth=self.batcher.queue_depth(),
            models=self.registry.describe(),
        )

    def model_info(self, name: str | None, version: int | None = None) -> ModelInfo:
        if name is None:
            name = self.lifecycle.default_model
            if name is None:
                raise NotReady(self.lifecycle.status()[1] or "No default model.")
        chosen, card = self.registry.card(name, version)
        loaded = self.registry.loaded(name, chosen)
        entry = self.registry.describe()[name]
        described = entry["versions"][str(chosen)]
        return ModelInfo(
            name=name,
            versions=entry["versions"],
            served_version=entry["default_version"],
            state=described["state"],
            labels=card.labels,
            label_descriptions=card.label_descriptions,
            positive_label=card.positive_label,
            threshold=card.threshold,
            input=card.input.model_dump(),
            output=card.output.model_dump(),
            metrics=card.metrics.model_dump(),
            data=card.data.model_dump(),
            training=card.training.model_dump(),
            framework=card.framework.model_dump(),
            files=card.files,
            intended_use=card.intended_use,
            description=card.description,
            architecture=card.architecture,
            created_at=card.created_at,
            load_seconds=round(loaded.load_seconds, 3) if loaded else None,
            loaded_at=loaded.loaded_at if loaded else None,
            batching=described["batching"],
            input_checks=OOD_MEANING,
            digest=card.digest,
            explain=card.explain.model_dump() if card.explain else None,
            ood_check=card.ood_check.model_dump() if card.ood_check else None,
            calibration=card.calibration.model_dump() if card.calibration else None,
        )
