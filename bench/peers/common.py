"""The work every peer server does, written once so that all of them do the same work.

Each peer (BentoML, LitServe, PyTriton) imports this module from its own virtual environment,
which has TensorFlow, Pillow and numpy but not the service's packages, so nothing from `app/`
is imported here. What it repeats from the service, on purpose:

- decoding: Pillow with the same allowed formats, converted to RGB uint8 (`app/imaging.py`);
  the service's out-of-distribution check and EXIF handling are left out, so the peers do
  slightly less per image than the service (about 0.2 ms);
- inference: the SavedModel's `serving_default` signature on a uint8 [N, H, W, 3] batch named
  `images`, output `probabilities`;
- the decision: the card's positive label when its probability >= the card's threshold.

The model is chosen by the benchmark (`PEER_MODEL_DIR`, the version the service serves).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ALLOWED_FORMATS = ("BMP", "PNG", "JPEG", "TIFF")  # the service's list (app/imaging.py)
MODEL_DIR_ENV = "PEER_MODEL_DIR"


def decode(data: bytes) -> np.ndarray:
    """Image bytes -> [H, W, 3] RGB uint8, with the service's decoder."""
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
        return rgb_pixels(image)


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """An opened (not yet decoded) Pillow image -> [H, W, 3] RGB uint8."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class Card:
    name: str
    version: int
    labels: list[str]
    positive_label: str
    threshold: float

    @classmethod
    def read(cls, model_dir: Path) -> Card:
        card = json.loads((model_dir / "model_card.json").read_text())
        return cls(
            name=card["name"],
            version=int(card["version"]),
            labels=list(card["labels"]),
            positive_label=card["positive_label"],
            threshold=float(card["threshold"]),
        )


class Classifier:
    """The SavedModel's serving signature plus the card's threshold."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        import tensorflow as tf

        path = Path(model_dir or os.environ[MODEL_DIR_ENV])
        self.card = Card.read(path)
        self._tf = tf
        self._signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        self._positive = self.card.labels.index(self.card.positive_label)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """[N, n_labels] for N decoded images: one call per group of equal-sized images."""
        out = np.empty((len(images), len(self.card.labels)), dtype=np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, pixels in enumerate(images):
            groups.setdefault(pixels.shape, []).append(index)
        for indices in groups.values():
            batch = self._tf.constant(np.stack([images[i] for i in indices]))
            out[indices] = self._signature(images=batch)["probabilities"].numpy()
        return out

    def answer(self, probabilities: np.ndarray) -> dict[str, Any]:
        """The JSON answer for one image: label, probabilities, threshold, model."""
        card = self.card
        blast = float(probabilities[self._positive])
        label = card.positive_label if blast >= card.threshold else self._other_label()
        return {
            "label": label,
            "probabilities": {
                name: float(p) for name, p in zip(card.labels, probabilities, strict=True)
            },
            "blast_probability": blast,
            "threshold": card.threshold,
            "model": card.name,
            "version": card.version,
        }

    def classify(self, images: Sequence[bytes]) -> list[dict[str, Any]]:
        """Decode, one batched call, threshold: the whole per-request work for a batch."""
        return self.classify_pixels([decode(data) for data in images])

    def classify_pixels(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        return [self.answer(row) for row in self.probabilities(images)]

    def warm_up(self, max_batch_size: int) -> None:
        """Trace the batch sizes the server will form, as the service does before it is ready."""
        blank = np.zeros((450, 450, 3), dtype=np.uint8)
        for size in sorted({1, 2, 4, 8, max_batch_size}):
            if size <= max_batch_size:
                self.probabilities([blank] * size)

    def _other_label(self) -> str:
        return next(label for label in self.card.labels if label != self.card.positive_label)
