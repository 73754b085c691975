"""Score image files with an exported version, exactly as its serving signature does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from contract.card import CARD_FILE, ModelCard
from training.data import decode_rgb


def predict_files(version_dir: Path | str, files: Sequence[Path | str]) -> np.ndarray:
    """``[N, 2]`` probabilities (card label order) for each file, one image per call."""
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    rows = [
        serve(images=tf.constant(decode_rgb(Path(f))[None]))["probabilities"].numpy()[0]
        for f in files
    ]
    return np.stack(rows) if rows else np.zeros((0, 2), dtype=np.float32)


def classify_files(version_dir: Path | str, files: Sequence[Path | str]) -> list[dict[str, object]]:
    """Label, P(all) and threshold per file, using the card's threshold."""
    card = ModelCard.model_validate_json((Path(version_dir) / CARD_FILE).read_text())
    probabilities = predict_files(version_dir, files)
    positive = card.positive_index
    negative = next(label for label in card.labels if label != card.positive_label)
    return [
        {
            "file": str(f),
            "label": card.positive_label if p[positive] >= card.threshold else negative,
            "p_all": float(p[positive]),
            "threshold": card.threshold,
        }
        for f, p in zip(files, probabilities, strict=True)
    ]
