"""Prometheus metrics, in a CollectorRegistry owned by one app (no process globals)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.registry import LoadedVersion

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "leuk_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "leuk_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "leuk_images_classified",
            "Images classified, by model, version and predicted label.",
            ["model", "version", "label"],
            registry=r,
        )
        self.ood = Counter(
            "leuk_images_out_of_distribution",
            "Classified images flagged out of distribution.",
            ["model", "version"],
            registry=r,
        )
        self.rejected = Counter(
            "leuk_inputs_rejected",
            "Requests rejected because of their input, by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "leuk_inference_batch_size",
            "Images per inference call.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "leuk_queue_wait_seconds",
            "Time an image waited in the batch queue.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "leuk_inference_seconds",
            "Duration of one inference call (one batch).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "leuk_model_load_seconds",
            "Seconds to verify, load and warm up a model version.",
            ["model", "version"],
            registry=r,
        )
        self.model_info = Gauge(
            "leuk_model_info",
            "1 for each loaded model version; labels describe it.",
            ["model", "version", "threshold", "tensorflow", "default"],
            registry=r,
        )
        self.ready = Gauge("leuk_ready", "1 when the service is ready to classify.", registry=r)
        self.queue_depth = Gauge("leuk_queue_depth", "Images waiting for inference.", registry=r)

    def observe_batch(
        self, model: LoadedVersion, size: int, waits: list[float], seconds: float
    ) -> None:
        version = str(model.version)
        self.batch_size.labels(model.name, version).observe(size)
        self.inference.labels(model.name, version).observe(seconds)
        for wait in waits:
            self.queue_wait.observe(wait)

    def observe_loaded(self, model: LoadedVersion, is_default: bool) -> None:
        version = str(model.version)
        self.load_seconds.labels(model.name, version).set(model.load_seconds)
        tensorflow = model.card.framework.tensorflow
        common = (model.name, version, str(model.card.threshold), tensorflow)
        stale = (*common, "false" if is_default else "true")
        with contextlib.suppress(KeyError):  # a version's default flag changed
            self.model_info.remove(*stale)
        self.model_info.labels(*common, "true" if is_default else "false").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
