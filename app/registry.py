"""Loaded model versions, their states, and the one rule that says which version serves.

``ModelRegistry.resolve(name, version)`` is the only place a version is chosen: an explicit
version; else the model's pin (``LEUK_MODEL_VERSION`` for the default model); else the newest
version that verifies and loads (TensorFlow Serving's rule), kept until a newer one loads
(``refresh``). Everything else (the data plane, the lifecycle, the benchmark) asks it. The
disk layout is :mod:`app.store`'s.

A version that fails (missing card, hash mismatch, unreadable SavedModel) is recorded with
its reason and never crashes the process; it is verified again once its files change (a
copy completed, a file replaced). A loaded version keeps serving from memory if its files
later vanish from disk, and ``describe`` says so.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from app.errors import ModelNotFound, ModelUnavailable, VersionNotFound
from app.log import get_logger
from app.runtime import ModelRuntime, SavedModelRuntime
from app.store import Fingerprint, ModelStore, VersionFailed
from contract.card import ModelCard

_log = get_logger("store")
_TF_FUNCTION_PREFIX = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


@dataclass
class LoadedVersion:
    """One verified, loaded and warmed-up model version."""

    name: str
    version: int
    card: ModelCard
    runtime: ModelRuntime
    load_seconds: float
    loaded_at: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)


@dataclass
class VersionStatus:
    state: Literal["available", "loading", "ready", "failed"] = "available"
    reason: str | None = None
    # What the folder held when it failed: the version is verified again once this changes
    # (a version seen half-copied must not stay failed once the copy completes).
    fingerprint: Fingerprint | None = None


Loader = Callable[[Path, ModelCard], ModelRuntime]
Warmup = Callable[[ModelRuntime], None]
"""Runs the first calls of a fresh runtime, before it is reported ready."""


def load_saved_model(path: Path, card: ModelCard) -> ModelRuntime:
    score = card.ood_check.output_name if card.ood_check else None
    # Explanations run the explain signature, and flag unfamiliar cells the same way.
    explain = {card.explain.signature: [score]} if card.explain and score else None
    return SavedModelRuntime.load(
        path,
        signature=card.input.signature,
        input_name=card.input.input_name,
        output_name=card.output.output_name,
        n_labels=len(card.labels),
        score_name=score,
        also_required=explain,
    )


def probe_images(count: int, seed: int = 0) -> NDArray[np.uint8]:
    """Synthetic 450x450 'cells' (textured discs on black) for warm-up."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:450, :450]
    images = np.zeros((count, 450, 450, 3), dtype=np.uint8)
    for image in images:
        cy, cx, radius = rng.uniform(170, 280), rng.uniform(170, 280), rng.uniform(60, 110)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[disc] = rng.integers(40, 240, size=(int(disc.sum()), 3), dtype=np.uint8)
    return images


def warmup_runtime(batch_sizes: Sequence[int]) -> Warmup:
    """Run each batch size once at 450x450: first calls allocate kernels and buffers."""

    def warm(runtime: ModelRuntime) -> None:
        for size in batch_sizes:
            runtime.predict(probe_images(size))

    return warm


def load_error_reason(exc: BaseException) -> str:
    """A readable, bounded reason: the exception type and the first line of its message.

    TensorFlow's errors keep their text in ``.message`` and repr as e.g. ``DataLossError()``.
    """
    if isinstance(exc, VersionFailed):
        return str(exc)[:500]
    message = str(getattr(exc, "message", "") or exc)
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first_line = _TF_FUNCTION_PREFIX.sub("", first_line)  # names TF's graph node, not the file
    reason = f"load failed: {type(exc).__name__}" + (f": {first_line}" if first_line else "")
    return reason if len(reason) <= 300 else reason[:299] + "…"


@dataclass
class ModelRegistry:
    """Versions on disk, their state, and the loaded ones. Thread-safe; loading blocks."""

    store: ModelStore
    loader: Loader = load_saved_model
    warmup: Warmup = field(default_factory=lambda: warmup_runtime([1]))
    # How loaded versions are batched (app/batching.py): "stacked", or "per_image" when
    # LEUK_EXACT_BATCHING runs every image alone. Reported per loaded version.
    batching: Literal["stacked", "per_image"] = "stacked"
    _loaded: dict[tuple[str, int], LoadedVersion] = field(default_factory=dict)
    _status: dict[tuple[str, int], VersionStatus] = field(default_factory=dict)
    _chosen: dict[str, int] = field(default_factory=dict)  # model -> version served by default
    _pins: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _load_locks: dict[tuple[str, int], threading.Lock] = field(default_factory=dict)

    # --- which version serves ------------------------------------------------------------
    def pin(self, name: str, version: int) -> None:
        """Serve exactly ``version`` of ``name`` when no version is asked for."""
        with self._lock:
            self._pins[name] = version

    def resolve(self, name: str, version: int | None = None) -> LoadedVersion:
        """The loaded version that answers for ``name`` (and ``version``, if asked); loads
        it if needed (blocking). Raises ModelNotFound, VersionNotFound or ModelUnavailable."""
        with self._lock:
            pinned = self._pins.get(name)
        if version is None and pinned is None:
            return self._newest(name)
        asked = version if version is not None else pinned
        assert asked is not None
        loaded = self.loaded(name, asked)
        if loaded is None:
            versions = self._versions_of(name)
            if asked not in versions:
                kind = "version" if version is not None else "pinned version"
                raise VersionNotFound(f"Model {name!r} has no {kind} {asked}.")
            try:
                loaded = self.load(name, asked)
            except VersionFailed as exc:
                raise ModelUnavailable(f"{name} version {asked} cannot be served: {exc}") from exc
        if version is None:
            with self._lock:
                self._chosen[name] = asked
        return loaded

    def loaded(self, name: str, version: int | None = None) -> LoadedVersion | None:
        """Non-blocking: what ``resolve`` would answer if it is already loaded, else None."""
        with self._lock:
            if version is None:
                version = self._pins.get(name, self._chosen.get(name))
                if version is None:
                    return None
            return self._loaded.get((name, version))

    def refresh(self, name: str) -> LoadedVersion | None:
        """Serve a newer version of ``name`` if one appeared and loads; else None. A pinned
        model never moves. A version that failed is verified again only once its files
        changed (see ``load``); the current one is kept meanwhile."""
        with self._lock:
            current = self._chosen.get(name)
            pinned = name in self._pins
        if current is None or pinned:
            return None
        newer = [v for v in self.store.models().get(name, []) if v > current]
        for version in sorted(newer, reverse=True):
            try:
                loaded = self.load(name, version)
            except VersionFailed:
                continue
            with self._lock:
                self._chosen[name] = version
            return loaded
        return None

    def card(self, name: str, version: int | None = None) -> tuple[int, ModelCard]:
        """The card of the version ``resolve`` answers with (or would try first), without
        loading anything: from memory when loaded, else from the store."""
        loaded = self.loaded(name, version)
        if loaded is not None:
            return loaded.version, loaded.card
        if version is None:
            with self._lock:
                version = self._pins.get(name, self._chosen.get(name))
        versions = self._versions_of(name)
        if version is None:
            version = max(versions)
        elif version not in versions:
            raise VersionNotFound(f"Model {name!r} has no version {version}.")
        try:
            return version, self.store.read_card(name, version)
        except VersionFailed as exc:
            raise ModelUnavailable(f"{name} version {version}: {exc}") from exc

    def _newest(self, name: str) -> LoadedVersion:
        loaded = self.loaded(name)
        if loaded is not None:
            return loaded
        reasons = []
        for version in sorted(self._versions_of(name), reverse=True):
            try:
                loaded = self.load(name, version)
            except VersionFailed as exc:
                reasons.append(f"version {version}: {exc}")
                continue
            with self._lock:
                self._chosen[name] = version
            return loaded
        raise ModelUnavailable(f"No loadable version of {name!r}: " + "; ".join(reasons))

    def _versions_of(self, name: str) -> list[int]:
        versions = self.store.models().get(name)
        if not versions:
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        return versions

    # --- loading -------------------------------------------------------------------------
    def load(self, name: str, version: int) -> LoadedVersion:
        """Verify, load and warm up one version (once); raises VersionFailed with the reason."""
        key = (name, version)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
                status = self._status.get(key)
            # Taken before verifying: files that change during the load are verified again.
            seen = self.store.fingerprint(name, version)
            if status is not None and status.state == "failed" and status.fingerprint == seen:
                raise VersionFailed(status.reason or "failed")
            with self._lock:
                self._status[key] = VersionStatus("loading")
            try:
                loaded = self._load_uncached(name, version)
            except Exception as exc:
                reason = load_error_reason(exc)
                with self._lock:
                    self._status[key] = VersionStatus("failed", reason, seen)
                # Once per distinct set of files: a poller retrying unchanged files is silent.
                _log.warning(
                    "version failed", extra={"model": name, "version": version, "reason": reason}
                )
                raise VersionFailed(reason) from exc
            with self._lock:
                self._loaded[key] = loaded
                self._status[key] = VersionStatus("ready")
            return loaded

    def _load_uncached(self, name: str, version: int) -> LoadedVersion:
        start = time.perf_counter()
        card = self.store.read_card(name, version)
        self.store.verify(name, version, card)
        runtime = self.loader(self.store.version_dir(name, version), card)
        self.warmup(runtime)
        return LoadedVersion(
            name=name,
            version=version,
            card=card,
            runtime=runtime,
            load_seconds=time.perf_counter() - start,
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    # --- reporting -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Every model and version on disk or loaded, with its state (and why, when failed).

        A loaded version stays ``ready`` when its files vanish from disk (it still answers
        from memory); its reason then names the missing files.
        """
        with self._lock:
            status = dict(self._status)
            chosen = dict(self._chosen)
            loaded = dict(self._loaded)
        on_disk = self.store.models()
        names = sorted({*on_disk, *(name for name, _ in loaded)})
        out: dict[str, Any] = {}
        for name in names:
            versions = sorted({*on_disk.get(name, []), *(v for n, v in loaded if n == name)})
            out[name] = {
                "default_version": chosen.get(name),
                "versions": {
                    str(v): self._describe_version(status.get((name, v)), loaded.get((name, v)))
                    for v in versions
                },
            }
        return out

    def _describe_version(
        self, status: VersionStatus | None, loaded: LoadedVersion | None
    ) -> dict[str, Any]:
        status = status or VersionStatus()
        reason = status.reason
        if loaded is not None and (
            missing := self.store.missing_files(loaded.name, loaded.version, loaded.card)
        ):
            reason = "files missing on disk: " + ", ".join(missing)
        batching = self.batching if loaded is not None else None
        return {"state": status.state, "reason": reason, "batching": batching}
