"""Request logic, independent of HTTP: resolve the model, decode, batch, shape results."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np

from app.batching import Batcher
from app.errors import ModelNotFound, ModelUnavailable, NotReady, ServiceError, VersionNotFound
from app.imaging import DecodedImage, decode_image
from app.metrics import Metrics
from app.registry import LoadedVersion, ModelRegistry, VersionFailed, read_card
from app.schemas import (
    ClassifyResponse,
    HealthSummary,
    ImageResult,
    InputCheckOut,
    ModelInfo,
    Summary,
)
from app.settings import Settings

OOD_MEANING = (
    "out_of_distribution=true means the image does not look like what the model was "
    "trained and validated on (a C-NMC-style segmented single white cell on a black "
    "background): the border is not black background, or no cell / too much foreground "
    "is visible. The label and probabilities are still reported but are not validated "
    "for such images and must not be used as a result; summaries report them separately."
)


@dataclass
class StartupState:
    default_model: str | None = None
    ready: bool = False
    reason: str | None = "starting: model not loaded yet"
    started_at: float = field(default_factory=time.monotonic)


class DataPlane:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, batcher: Batcher, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics
        self.state = StartupState()
        self._decode_limiter = anyio.CapacityLimiter(settings.decode_threads)

    # --- startup -----------------------------------------------------------------------
    def load_default(self) -> None:
        """Blocking: choose, verify, load and warm the default model (runs in a thread)."""
        try:
            name = self.registry.default_model_name(self.settings.default_model)
            self.state.default_model = name
            loaded = self.registry.select(name, self.settings.model_version)
        except ServiceError as exc:
            self.state.reason = exc.detail
            return
        except Exception as exc:  # never let a broken store kill the process
            self.state.reason = f"startup failed: {exc!r}"
            return
        self.metrics.observe_loaded(loaded, is_default=True)
        self._update_reason(name)
        self.state.ready = self.batcher.running
        self.metrics.ready.set(1 if self.state.ready else 0)

    def refresh(self) -> None:
        """Blocking, called periodically: pick up new versions (TF Serving's store polling).

        Not ready yet: retry the startup load (the store may have been fixed or filled).
        Ready and not pinned: switch to a newer version once it verified, loaded and warmed;
        a broken newer version is reported and the current one kept.
        """
        if not self.state.ready:
            self.load_default()
            return
        name = self.state.default_model
        if name is None or self.settings.model_version is not None:
            return
        previous = self.registry.get_loaded(name, None)
        try:
            loaded = self.registry.refresh(name)
        except Exception:  # a store that disappears must not stop the poller
            return
        if loaded is not None:
            if previous is not None:
                self.metrics.observe_loaded(previous, is_default=False)
            self.metrics.observe_loaded(loaded, is_default=True)
        self._update_reason(name)

    def _update_reason(self, name: str) -> None:
        """Say so when a newer version than the one served is broken."""
        served = self.registry.get_loaded(name, None)
        versions = self.registry.describe().get(name, {}).get("versions", {})
        broken = [
            f"version {v}: {s['reason']}"
            for v, s in versions.items()
            if s["state"] == "failed" and (served is None or int(v) > served.version)
        ]
        self.state.reason = (
            ("serving last good version; skipped " + "; ".join(broken)) if broken else None
        )

    def served_default(self) -> LoadedVersion:
        if not self.state.ready or self.state.default_model is None:
            raise NotReady(self.state.reason or NotReady.default_detail)
        loaded = self.registry.get_loaded(self.state.default_model, None)
        if loaded is None:  # pragma: no cover - ready implies loaded
            raise NotReady()
        return loaded

    def model_ready(self, name: str) -> LoadedVersion:
        """The loaded version serving ``name`` by default, without loading anything."""
        pinned = self.settings.model_version if name == self.state.default_model else None
        loaded = self.registry.get_loaded(name, pinned)
        if loaded is not None:
            return loaded
        if name not in self.registry.models():
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        raise NotReady(f"Model {name!r} is not loaded (it loads on its first request).")

    # --- classify ----------------------------------------------------------------------
    async def resolve(self, model: str | None, version: int | None) -> LoadedVersion:
        if model is None:
            return self.served_default()
        if version is not None and version < 1:
            raise VersionNotFound(f"Versions are positive integers, got {version}.")
        pinned = self.settings.model_version if model == self.state.default_model else None
        if version is None and pinned is not None:
            version = pinned
        loaded = self.registry.get_loaded(model, version)
        if loaded is not None:
            return loaded
        loaded = await anyio.to_thread.run_sync(self.registry.get, model, version)
        default = self.registry.get_loaded(self.state.default_model or "", None)
        self.metrics.observe_loaded(loaded, is_default=loaded is default)
        return loaded

    async def classify(
        self,
        loaded: LoadedVersion,
        payloads: list[bytes],
        request_id: str,
        on_decoded: Callable[[Sequence[DecodedImage]], None] | None = None,
    ) -> ClassifyResponse:
        decoded = await anyio.to_thread.run_sync(
            self._decode_all, payloads, on_decoded, limiter=self._decode_limiter
        )
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
        on_decoded: Callable[[Sequence[DecodedImage]], None] | None = None,
    ) -> list[DecodedImage]:
        """Runs in a worker thread, and so does ``on_decoded`` (the audit trail hashes the
        uploads there, off the event loop)."""
        decoded = []
        for index, payload in enumerate(payloads):
            try:
                decoded.append(decode_image(payload, self.settings.max_image_pixels))
            except ServiceError as exc:
                if len(payloads) > 1:
                    exc.detail = f"Image {index}: {exc.detail}"
                raise
        if on_decoded is not None:
            on_decoded(decoded)
        return decoded

    @staticmethod
    def _result(
        index: int, model: LoadedVersion, image: DecodedImage, row: np.ndarray
    ) -> ImageResult:
        card = model.card
        probabilities = {label: float(p) for label, p in zip(card.labels, row, strict=True)}
        positive = probabilities[card.positive_label]
        negative = next(label for label in card.labels if label != card.positive_label)
        label = card.positive_label if positive >= card.threshold else negative
        descriptions = (card.model_extra or {}).get("label_descriptions", {})
        check = image.check
        warnings = list(check.warnings)
        if check.out_of_distribution:
            warnings.insert(0, "out_of_distribution: " + ", ".join(check.reasons))
        return ImageResult(
            index=index,
            label=label,
            label_description=str(descriptions.get(label, label))
            if isinstance(descriptions, dict)
            else label,
            probabilities=probabilities,
            blast_probability=positive,
            threshold=card.threshold,
            model=model.name,
            version=model.version,
            out_of_distribution=check.out_of_distribution,
            input_check=InputCheckOut(
                out_of_distribution=check.out_of_distribution,
                reasons=check.reasons,
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
        )

    # --- health and info ---------------------------------------------------------------
    def health(self) -> HealthSummary:
        default = self.state.default_model
        loaded = self.registry.get_loaded(default, None) if default else None
        return HealthSummary(
            status="ready" if self.state.ready else "not_ready",
            ready=self.state.ready,
            reason=self.state.reason,
            default_model=default,
            default_version=loaded.version if loaded else None,
            uptime_seconds=round(time.monotonic() - self.state.started_at, 3),
            queue_depth=self.batcher.queue_depth(),
            models=self.registry.describe(),
        )

    def model_info(self, name: str | None, version: int | None = None) -> ModelInfo:
        if name is None:
            name = self.state.default_model
            if name is None:
                raise NotReady(self.state.reason or "No default model.")
        described = self.registry.describe()
        if name not in described:
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        entry = described[name]
        versions = [int(v) for v in entry["versions"]]
        if version is not None and version not in versions:
            raise VersionNotFound(f"Model {name!r} has no version {version}.")
        loaded = self.registry.get_loaded(name, version)
        if loaded is not None:
            card, chosen = loaded.card, loaded.version
        else:
            chosen = version or entry["default_version"] or max(versions)
            try:
                card = read_card(self.registry.store / name / str(chosen))
            except VersionFailed as exc:
                raise ModelUnavailable(f"{name} version {chosen}: {exc}") from exc
        extra = card.model_extra or {}
        return ModelInfo(
            name=name,
            versions=entry["versions"],
            served_version=entry["default_version"],
            state=entry["versions"][str(chosen)]["state"],
            labels=card.labels,
            label_descriptions=extra.get("label_descriptions", {}),
            positive_label=card.positive_label,
            threshold=card.threshold,
            input=card.input.model_dump(),
            output=card.output.model_dump(),
            metrics=extra.get("metrics", {}),
            data=extra.get("data", {}),
            training=extra.get("training", {}),
            framework=extra.get("framework", {}),
            files=card.files,
            intended_use=card.intended_use,
            description=str(extra.get("description", "")),
            architecture=extra.get("architecture"),
            created_at=extra.get("created_at"),
            load_seconds=round(loaded.load_seconds, 3) if loaded else None,
            loaded_at=loaded.loaded_at if loaded else None,
            batching=entry["versions"][str(chosen)]["batching"],
            input_checks=OOD_MEANING,
        )
