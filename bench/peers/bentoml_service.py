"""BentoML serving the committed SavedModel with adaptive batching.

Run from the repository root with the BentoML venv (`python -m bench.peers setup`):

    PEER_MODEL_DIR=model_store/cnmc-improved-cnn/2 bench/.venvs/bentoml/bin/bentoml serve \\
        bench.peers.bentoml_service:PeerClassifier --host 127.0.0.1 --port 8000

BentoML's HTTP server parses each request in its worker process; the batchable API gathers
concurrent calls (its dispatcher sizes batches from the measured latency, up to
`max_batch_size`, waiting at most `max_latency_ms`) and calls `classify` once per batch.
BentoML reads a raw body as JSON, so the image is sent as a multipart part named `files` (as the
service's multipart form) to a `PIL.Image.Image` field, BentoML's image input: BentoML opens
the part with Pillow (lazily, with the formats the part's type allows) and
bench/peers/common.py converts it to RGB uint8 as the service does. Settings and the docs they
follow: bench/peers/README.md.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
from PIL import Image

from bench.peers.common import Classifier, rgb_pixels

MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "16"))
# The dispatcher answers 503 to requests it expects to miss this bound: high enough that no
# request is dropped at c=64 on a busy 2-core machine; it does not set how long batches wait.
MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "10000"))
WORKERS = int(os.environ.get("PEER_WORKERS", "1"))


@bentoml.service(
    workers=WORKERS,
    # BentoML's advice for a batching service: concurrency = the batch size.
    traffic={"timeout": 60, "concurrency": MAX_BATCH_SIZE},
    logging={"access": {"enabled": False}},
)
class PeerClassifier:
    def __init__(self) -> None:
        self.classifier = Classifier()
        self.classifier.warm_up(MAX_BATCH_SIZE)

    @bentoml.api(
        route="/v1/classify",
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def classify(self, files: list[Image.Image]) -> list[dict[str, Any]]:
        return self.classifier.classify_pixels([rgb_pixels(image) for image in files])
