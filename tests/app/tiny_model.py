"""Export tiny SavedModels in the model_store contract format (see model_store/README.md).

The real models are trained by training/; these tiny ones exist so that tests can build
stores the real one never is: several models and versions, a broken version, a hash
mismatch, a missing card. They have the exact serving signature of the real export:
uint8 ``images`` [N, H, W, 3] of any size -> resize + scale inside -> ``probabilities``
[N, 2] in the order ``["hem", "all"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

LABELS = ["hem", "all"]
INPUT_SIZE = (32, 32)


def _build_keras_model(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(*INPUT_SIZE, 3), dtype="float32")
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Large weights in the head so that different images give clearly different outputs.
    outputs = keras.layers.Dense(
        2,
        activation="softmax",
        kernel_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=seed),
    )(x)
    return keras.Model(inputs, outputs)


class _ServingModule(tf.Module):  # type: ignore[misc]
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])  # type: ignore[untyped-decorator]
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.image.resize(tf.cast(images, tf.float32), INPUT_SIZE, method="bilinear")
        x = x / 255.0
        return {"probabilities": self.model(x, training=False)}


def file_hashes(version_dir: Path) -> dict[str, str]:
    """sha256 of every SavedModel file, relative '/'-separated paths (card and reports excluded)."""
    hashes: dict[str, str] = {}
    for path in sorted(version_dir.rglob("*")):
        rel = path.relative_to(version_dir).as_posix()
        if path.is_dir() or rel == "model_card.json" or rel.endswith((".md", ".png")):
            continue
        hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def make_card(name: str, version: int, files: dict[str, str], threshold: float) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": name,
        "version": version,
        "created_at": "2026-11-25T18:00:00Z",
        "architecture": "tiny-test",
        "description": "Tiny randomly initialised test model. Not trained; for tests only.",
        "intended_use": "Tests of the serving stack only. Not a diagnostic device.",
        "labels": LABELS,
        "label_descriptions": {
            "all": "ALL lymphoblast (leukaemic)",
            "hem": "normal (healthy) B-lymphoid cell",
        },
        "positive_label": "all",
        "threshold": threshold,
        "input": {
            "signature": "serving_default",
            "input_name": "images",
            "dtype": "uint8",
            "shape": [None, None, None, 3],
            "color": "RGB",
            "model_input_size": list(INPUT_SIZE),
            "resize": "bilinear, inside the model",
            "scaling": "x/255, inside the model",
            "expected_image": "C-NMC-style segmented white cell on black background, 450x450",
        },
        "output": {"output_name": "probabilities", "dtype": "float32", "shape": [None, 2]},
        "metrics": {
            "test": {"subjects": ["none"], "n_images": 0, "balanced_accuracy": 0.5},
        },
        "data": {
            "dataset": "none (untrained test model)",
            "citation": "n/a",
            "manifest_sha256": "0" * 64,
            "splits": {},
        },
        "training": {"config": {}, "seed": 0, "epochs_run": 0, "seconds": 0.0},
        "framework": {"tensorflow": tf.__version__, "keras": "3", "python": "3.11"},
        "files": files,
    }


def export_tiny_model(
    store: Path, name: str, version: int, *, seed: int = 0, threshold: float = 0.5
) -> Path:
    """Write ``store/name/version`` atomically (temp dir + rename), like training does."""
    model_dir = store / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    module = _ServingModule(_build_keras_model(seed))
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    files = file_hashes(tmp)
    card = make_card(name, version, files, threshold)
    (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
    final = model_dir / str(version)
    os.rename(tmp, final)
    return final


def reference_predict(version_dir: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities straight from the SavedModel, independent of app code."""
    loaded = tf.saved_model.load(str(version_dir))
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    return np.asarray(out["probabilities"].numpy())
