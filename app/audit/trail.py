"""The audit trail as the service uses it: one draft per classify request, written before
the response (fail-closed) or counted as lost (serve_and_count), plus health and metrics.

A request's draft collects what the request learns (the model version, the uploaded
payloads, the decoded images) and becomes one ``request`` record and one ``image`` record
per uploaded image. A classified request is recorded before its result is returned; a
rejected one is recorded by the request middleware once its error response is known.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.audit.schemas import AuditHealth
from app.audit.store import AuditStore, utc_timestamp
from app.audit.writer import AuditQueueFull, AuditWriter
from app.errors import AuditUnavailable
from app.imaging import DecodedImage
from app.log import get_logger
from app.registry import LoadedVersion
from app.schemas import ClassifyResponse, ExplainResponse
from app.settings import Settings

_log = get_logger("audit")
WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
ANONYMOUS = "anonymous"  # the caller when the service runs without API keys


class AuditMetrics:
    """The audit trail's Prometheus series, in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "leuk_audit_records_written", "Audit records committed.", registry=registry
        )
        self.write_seconds = Histogram(
            "leuk_audit_write_seconds",
            "Duration of one audit batch commit (hashing, chaining, insert, commit).",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "leuk_audit_write_failures",
            "Audit batches that could not be written (or were refused: queue full).",
            registry=registry,
        )
        self.lost = Counter(
            "leuk_audit_records_lost",
            "Requests whose audit records were not written, by what the service did: "
            "refused (503 audit_unavailable, no result), served (serve_and_count policy) or "
            "after_response (a rejected request's record).",
            ["outcome"],
            registry=registry,
        )


class AuditTrail:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.enabled = settings.audit_enabled
        self.policy = settings.audit_failure_policy
        self.metrics = AuditMetrics(registry)
        self.store = AuditStore(settings.audit_url()) if self.enabled else None
        self.writer = (
            AuditWriter(
                self.store,
                settings.audit_queue_size,
                on_commit=self._committed,
                on_failure=self._failed,
            )
            if self.store is not None
            else None
        )
        self.last_error: str | None = None

    # --- lifecycle (blocking; the lifespan runs them in a thread) -------------------------
    def start(self) -> None:
        if self.store is None or self.writer is None:
            return
        try:
            self.store.migrate()
        except Exception as exc:  # the writer retries; health reports it meanwhile
            self._failed(exc)
        self.writer.start()

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        if self.store is not None:
            self.store.close()

    # --- requests ------------------------------------------------------------------------
    def begin(self, request_id: str, route: str, caller: str, sample_id: str | None) -> AuditDraft:
        return AuditDraft(
            trail=self if self.enabled else None,
            request_id=request_id,
            route=route,
            caller=caller,
            sample_id=sample_id,
        )

    async def write(self, records: list[dict[str, Any]]) -> None:
        """Append records and wait for their commit; raises if they were not written."""
        assert self.writer is not None
        try:
            future = self.writer.submit(records)
        except AuditQueueFull as exc:
            self._failed(exc)
            raise
        await asyncio.wrap_future(future)

    # --- state ---------------------------------------------------------------------------
    def health(self) -> AuditHealth:
        """Blocking when failing: checks whether the database is back."""
        if self.store is None or self.writer is None:
            return AuditHealth(
                state="disabled",
                backend=None,
                database=None,
                failure_policy=self.policy,
                last_error=None,
                queue_depth=0,
            )
        if self.last_error is not None:
            try:
                self.store.check_writable()
                self.last_error = None
            except Exception as exc:
                self.last_error = _describe(exc)
        return AuditHealth(
            state="failing" if self.last_error else "ok",
            backend=self.store.backend,
            database=self.store.describe(),
            failure_policy=self.policy,
            last_error=self.last_error,
            queue_depth=self.writer.queue_depth(),
        )

    def blocks_classify(self, health: AuditHealth) -> bool:
        return health.state == "failing" and self.policy == "fail_closed"

    def _committed(self, records: int, seconds: float) -> None:
        self.metrics.written.inc(records)
        self.metrics.write_seconds.observe(seconds)
        self.last_error = None

    def _failed(self, exc: BaseException) -> None:
        self.metrics.failures.inc()
        self.last_error = _describe(exc)
        _log.error("audit write failed", extra={"error": self.last_error})


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


@dataclass
class AuditDraft:
    """What one classify request has learnt so far; ``trail=None``: auditing is off."""

    trail: AuditTrail | None
    request_id: str
    route: str
    caller: str
    sample_id: str | None
    started: float = field(default_factory=time.perf_counter)
    model: LoadedVersion | None = None
    payloads: Sequence[bytes] | None = None
    decoded: Sequence[DecodedImage] | None = None
    digests: list[str] | None = None
    done: bool = False

    def note_decoded(self, decoded: Sequence[DecodedImage]) -> None:
        """Called in the decoding thread: hash the uploads there, in parallel with other
        requests, rather than in the one writer thread every request waits for."""
        self.decoded = decoded
        if self.trail is not None and self.payloads is not None:
            self.digests = [hashlib.sha256(payload).hexdigest() for payload in self.payloads]

    async def record_result(self, response: ClassifyResponse | ExplainResponse) -> None:
        """Record a classified request before its result goes out (the failure policy)."""
        if self.trail is None or self.done:
            return
        self.done = True
        records = self._records(200, None, time.perf_counter() - self.started, response)
        try:
            await self.trail.write(records)
        except Exception as exc:
            if self.trail.policy == "fail_closed":
                self.trail.metrics.lost.labels("refused").inc()
                raise AuditUnavailable() from exc
            self.trail.metrics.lost.labels("served").inc()

    async def record_outcome(self, status: int, error_code: str | None, seconds: float) -> None:
        """Record a request that was not classified (called once its response is known)."""
        if self.trail is None or self.done:
            return
        self.done = True
        try:
            await self.trail.write(self._records(status, error_code, seconds, None))
        except Exception:
            self.trail.metrics.lost.labels("after_response").inc()

    def _records(
        self,
        status: int,
        error_code: str | None,
        seconds: float,
        response: ClassifyResponse | ExplainResponse | None,
    ) -> list[dict[str, Any]]:
        now = utc_timestamp()
        model = self.model
        common: dict[str, Any] = {
            "recorded_at": now,
            "request_id": self.request_id,
            "sample_id": self.sample_id,
            "model": model.name if model else None,
            "model_version": model.version if model else None,
            "status": status,
            "error_code": error_code,
        }
        payloads = list(self.payloads or [])
        request = {
            **common,
            "kind": "request",
            "caller": self.caller,
            "route": self.route,
            "model_digest": model.card.files.get("saved_model.pb") if model else None,
            "threshold": model.card.threshold if model else None,
            "latency_ms": round(seconds * 1000, 3),
            "n_images": len(payloads) if self.payloads is not None else None,
        }
        images = []
        results = response.results if response is not None else []
        decoded = list(self.decoded or [])
        for index, payload in enumerate(payloads):
            image: dict[str, Any] = {**common, "kind": "image", "image_index": index}
            if self.digests is not None:
                image.update(sha256=self.digests[index], byte_size=len(payload))
            else:  # not decoded (a rejected request): the writer thread hashes it
                image["payload"] = payload
            if index < len(decoded):
                height, width = decoded[index].pixels.shape[:2]
                image.update(format=decoded[index].source_format, width=width, height=height)
            if index < len(results):
                result = results[index]
                image.update(
                    label=result.label,
                    blast_probability=result.blast_probability,
                    out_of_distribution=result.out_of_distribution,
                    ood_reasons=result.input_check.reasons,
                    warnings=result.warnings,
                )
            images.append(image)
        return [request, *images]
