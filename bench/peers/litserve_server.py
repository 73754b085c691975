"""LitServe serving the committed SavedModel with its request batching.

Run from the repository root with the LitServe venv (`python -m bench.peers setup`):

    PEER_MODEL_DIR=model_store/cnmc-improved-cnn/2 PEER_PORT=8000 \\
        bench/.venvs/litserve/bin/python -m bench.peers.litserve_server

LitServe's HTTP server (FastAPI + uvicorn, its own process) reads each request and passes it
over a queue to the inference worker process, which forms batches and calls `predict`.
LitServe reads a request body as JSON unless it is a form, so the image is sent the way its
docs send files: one multipart part (`files`, as the service's multipart form). Settings and
the docs they follow: bench/peers/README.md.
"""

from __future__ import annotations

import os
from typing import Any

import litserve as ls

from bench.peers.common import Classifier

MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "16"))
BATCH_TIMEOUT_S = float(os.environ.get("PEER_BATCH_TIMEOUT_S", "0.002"))
WORKERS_PER_DEVICE = int(os.environ.get("PEER_WORKERS", "1"))


class ClassifyAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier = Classifier()
        self.classifier.warm_up(MAX_BATCH_SIZE)

    # No annotation on `request`: LitServe then hands over the form it parsed from the body.
    def decode_request(self, request) -> bytes:  # type: ignore[no-untyped-def]
        data: bytes = request["files"].file.read()
        return data

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return inputs

    def predict(self, images: list[bytes]) -> list[dict[str, Any]]:
        return self.classifier.classify(images)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    api = ClassifyAPI(
        max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/v1/classify"
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=WORKERS_PER_DEVICE,
        timeout=60,
        fast_queue=True,
    )
    server.run(
        host="127.0.0.1",
        port=int(os.environ["PEER_PORT"]),
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
