"""The service's lifecycle: start-up load, store polling, and readiness with its reason.

One object owns the answer to "can this process serve, and if not, why": ``/health``,
``/health/ready`` and the data plane ask it. States:

- ``starting``: no attempt to load the default model has finished yet;
- ``ready``: the default model is loaded and warm, nothing to report;
- ``degraded``: it serves, but something needs an operator (the served version's files are
  gone from disk, or a newer version is broken and was skipped): the reason says what;
- ``failed``: the default model cannot be served (empty store, no loadable version): the
  reason says why, and every poll tries again (a store being filled or repaired recovers).

``run`` is started by the app's lifespan: it loads the default model in a worker thread
(the process answers liveness meanwhile), then polls the store every
``LEUK_STORE_POLL_SECONDS`` as TensorFlow Serving does.
"""

from __future__ import annotations

import time
from enum import StrEnum

import anyio
import anyio.to_thread

from app.batching import Batcher
from app.errors import NotReady, ServiceError
from app.log import get_logger
from app.metrics import Metrics
from app.registry import LoadedVersion, ModelRegistry
from app.settings import Settings

_log = get_logger("lifecycle")


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    FAILED = "failed"


class Lifecycle:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, batcher: Batcher, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics
        self.default_model: str | None = None
        self.started_at = time.monotonic()
        self._loaded_once = False
        self._attempted = False
        self._failure: str | None = None

    # --- what /health reads --------------------------------------------------------------
    def status(self) -> tuple[State, str | None]:
        """The current state and its reason, worked out now (never a stale reason)."""
        served = self._served()
        if served is None:
            if not self._attempted:
                return State.STARTING, "starting: model not loaded yet"
            return State.FAILED, self._failure or NotReady.default_detail
        notes = self._serving_notes(served)
        return (State.DEGRADED, notes) if notes else (State.READY, None)

    @property
    def ready(self) -> bool:
        """Serving (ready or degraded). Cheap: no store scan, unlike ``status`` (its reason
        needs one), so event-loop probes and metrics can ask it."""
        return self._served() is not None

    def served_default(self) -> LoadedVersion:
        """The loaded default model, or NotReady with the reason."""
        served = self._served()
        if served is None:
            raise NotReady(self.status()[1] or NotReady.default_detail)
        return served

    def _served(self) -> LoadedVersion | None:
        if self.default_model is None or not self._loaded_once or not self.batcher.running:
            return None
        return self.registry.loaded(self.default_model)

    def _serving_notes(self, served: LoadedVersion) -> str | None:
        """What a serving process should admit: the served version's files are gone from disk
        (it still answers from memory), or a newer version than the one served is broken."""
        versions = self.registry.describe().get(served.name, {}).get("versions", {})
        notes = []
        reason = versions.get(str(served.version), {}).get("reason")
        if reason and reason.startswith("files missing on disk"):
            notes.append(f"serving version {served.version} from memory; {reason}")
        broken = [
            f"version {v}: {s['reason']}"
            for v, s in versions.items()
            if s["state"] == "failed" and int(v) > served.version
        ]
        if broken:
            notes.append("serving last good version; skipped " + "; ".join(broken))
        return "; ".join(notes) or None

    # --- transitions (blocking: run in a worker thread) -----------------------------------
    def load_default(self) -> None:
        """Choose, verify, load and warm the default model."""
        try:
            name = self.registry.store.default_model(self.settings.default_model)
            self.default_model = name
            if self.settings.model_version is not None:
                self.registry.pin(name, self.settings.model_version)
            loaded = self.registry.resolve(name)
        except ServiceError as exc:
            self._failure = exc.detail
            return
        except Exception as exc:  # never let a broken store kill the process
            self._failure = f"startup failed: {exc!r}"
            return
        finally:
            self._attempted = True
        self._failure = None
        self._loaded_once = True
        self.metrics.observe_loaded(loaded, is_default=True)
        self.metrics.ready.set(1 if self.ready else 0)

    def refresh(self) -> LoadedVersion | None:
        """Not serving yet: retry the start-up load (the store may have been fixed or
        filled). Serving: switch to a newer version once it verified, loaded and warmed
        (``ModelRegistry.refresh``; a pinned model never moves). Returns a newly served
        version, if any."""
        if self._served() is None:
            self.load_default()
            return self._served()
        name = self.default_model
        assert name is not None
        previous = self.registry.loaded(name)
        try:
            loaded = self.registry.refresh(name)
        except Exception:  # a store that disappears must not stop the poller
            return None
        if loaded is not None:
            if previous is not None:
                self.metrics.observe_loaded(previous, is_default=False)
            self.metrics.observe_loaded(loaded, is_default=True)
        return loaded

    # --- the lifespan task ---------------------------------------------------------------
    async def run(self) -> None:
        """Load the default model, then poll the store (cancelled at shutdown)."""
        await anyio.to_thread.run_sync(self.load_default, abandon_on_cancel=True)
        state, reason = self.status()
        _log.info(
            "ready" if self.ready else "not ready",
            extra={"default_model": self.default_model, "state": state, "reason": reason},
        )
        interval = self.settings.store_poll_seconds
        if interval <= 0:
            return
        while True:
            await anyio.sleep(interval)
            before = self._served()
            changed = await anyio.to_thread.run_sync(self.refresh, abandon_on_cancel=True)
            if changed is not None and changed is not before:
                _log.info(
                    "serving new version",
                    extra={"model": changed.name, "version": changed.version, "ready": self.ready},
                )
