"""NVIDIA Triton (through PyTriton) serving the committed SavedModel with dynamic batching.

Run from the repository root with the PyTriton venv (`python -m bench.peers setup`):

    PEER_MODEL_DIR=model_store/cnmc-improved-cnn/2 PEER_PORT=8000 \\
        bench/.venvs/pytriton/bin/python -m bench.peers.pytriton_server

Triton's own HTTP front end (C++) takes KServe v2 requests at
`POST /v2/models/classifier/infer`: the image bytes are one element of the BYTES input
`image` (bench/load.py `make_kserve_body`). Triton forms batches (dynamic batcher) and hands
them to the Python callable below through PyTriton's proxy; the callable decodes, runs the
signature once per batch and applies the card threshold (bench/peers/common.py). Settings and
the docs they follow: bench/peers/README.md.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers.common import Classifier

MODEL_NAME = "classifier"
MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "16"))
# Triton's dynamic batcher waits at most this long for more requests once one is queued.
MAX_QUEUE_DELAY_US = int(os.environ.get("PEER_MAX_QUEUE_DELAY_US", "2000"))
# Model instances: Triton keeps this many copies of the callable, each served by its own
# thread of this process (one TensorFlow runtime shared), and sends batches to a free one.
INSTANCES = int(os.environ.get("PEER_INSTANCES", "1"))


def make_infer(classifier: Classifier):  # type: ignore[no-untyped-def]
    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        answers = classifier.classify([bytes(row[0]) for row in image])
        probabilities = np.array(
            [[a["probabilities"][name] for name in classifier.card.labels] for a in answers],
            dtype=np.float32,
        )
        labels = np.array([[a["label"].encode()] for a in answers], dtype=np.bytes_)
        return {"probabilities": probabilities, "label": labels}

    return infer


def main() -> None:
    # SIGTERM (how the benchmark stops a server) unwinds the `with Triton` block, which stops
    # the Triton server process; Python's default would leave it running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    port = int(os.environ["PEER_PORT"])
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=int(os.environ["PEER_GRPC_PORT"]),
        metrics_port=int(os.environ["PEER_METRICS_PORT"]),
        allow_metrics=True,
        log_verbose=0,
    )
    classifier = Classifier()
    classifier.warm_up(MAX_BATCH_SIZE)
    labels = classifier.card.labels
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[make_infer(classifier) for _ in range(INSTANCES)],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(len(labels),)),
                Tensor(name="label", dtype=np.bytes_, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=MAX_QUEUE_DELAY_US),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
