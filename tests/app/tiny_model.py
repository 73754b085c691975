"""Export tiny SavedModels in the model_store contract format (see model_store/README.md).

The real models are trained by training/; these tiny ones exist so that tests can build
stores the real one never is: several models and versions, a broken version, a hash
mismatch, a missing card. They have the exact serving signature of the real export:
uint8 ``images`` [N, H, W, 3] of any size -> resize + scale inside -> ``probabilities``
[N, 2] in the order ``["hem", "all"]``.

Optionally (``ood_output``) they also return ``ood_score`` [N] as a model with a learned
out-of-distribution check does: here simply the image's mean brightness in [0, 1], so a test
picks inputs on either side of a card's threshold by how bright it draws them; and
(``explain``) an ``explain`` signature with the same outputs plus a ``class_activation`` map.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from contract.card import (
    CARD_FILE,
    CardCalibration,
    CardData,
    CardExplain,
    CardMetrics,
    CardOODCheck,
    CardTraining,
    ModelCard,
)
from training.export import build_card

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


_IMAGES = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")


class _ServingModule(tf.Module):  # type: ignore[misc]
    def __init__(self, model: Any, ood_output: bool = False) -> None:
        super().__init__()
        self.model = model
        self.ood_output = ood_output

    @tf.function(input_signature=[_IMAGES])  # type: ignore[untyped-decorator]
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.image.resize(tf.cast(images, tf.float32), INPUT_SIZE, method="bilinear")
        x = x / 255.0
        outputs = {"probabilities": self.model(x, training=False)}
        if self.ood_output:
            outputs["ood_score"] = tf.reduce_mean(tf.cast(images, tf.float32) / 255.0, [1, 2, 3])
        return outputs

    @tf.function(input_signature=[_IMAGES])  # type: ignore[untyped-decorator]
    def explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = dict(self.serve(images))
        # Not Grad-CAM: a signed map in the input's pixel frame, enough for the service's
        # drawing code (the real method is training/explain.py's).
        outputs["class_activation"] = tf.reduce_mean(tf.cast(images, tf.float32), -1) / 255.0 - 0.25
        return outputs


def file_hashes(version_dir: Path) -> dict[str, str]:
    """sha256 of every SavedModel file, relative '/'-separated paths (card and reports excluded)."""
    hashes: dict[str, str] = {}
    for path in sorted(version_dir.rglob("*")):
        rel = path.relative_to(version_dir).as_posix()
        if path.is_dir() or rel == "model_card.json" or rel.endswith((".md", ".png")):
            continue
        hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def make_card(name: str, version: int, files: dict[str, str], threshold: float) -> ModelCard:
    """The card training writes (``training.export.build_card``), filled for an untrained model."""
    return build_card(
        name=name,
        version=version,
        architecture="tiny-test",
        description="Tiny randomly initialised test model. Not trained; for tests only.",
        threshold=threshold,
        input_size=INPUT_SIZE[0],
        crop_fraction=1.0,
        metrics=CardMetrics(test={"subjects": ["none"], "n_images": 0, "balanced_accuracy": 0.5}),
        data=CardData(
            dataset="none (untrained test model)",
            citation="n/a",
            manifest_sha256="0" * 64,
            duplicates_dropped=0,
            splits={},
        ),
        training=CardTraining(
            config={},
            seed=0,
            epochs_run=0,
            selected_epoch=0,
            seconds=0.0,
            seconds_per_epoch=0.0,
            images_per_second=0.0,
            command="tests/app/tiny_model.py",
        ),
        files=files,
        intended_use="Tests of the serving stack only. Not a diagnostic device.",
        resize="bilinear, inside the model",
        created_at="2026-11-25T18:00:00Z",
    )


def export_tiny_model(
    store: Path,
    name: str,
    version: int,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    ood_output: bool = False,
    ood_check: CardOODCheck | None = None,
    calibration: CardCalibration | None = None,
    explain: bool = False,
) -> Path:
    """Write ``store/name/version`` atomically (temp dir + rename), like training does.

    ``ood_output`` puts ``ood_score`` in the signatures; ``ood_check`` in the card (the two
    are separate so that a test can write a card asking for an output the model lacks).
    """
    model_dir = store / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    module = _ServingModule(_build_keras_model(seed), ood_output)
    signatures = {"serving_default": module.serve}
    if explain:
        signatures["explain"] = module.explain
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    files = file_hashes(tmp)
    card = make_card(name, version, files, threshold)
    if ood_check is not None or calibration is not None or explain:
        card = ModelCard.model_validate(
            card.model_dump()
            | {
                "ood_check": ood_check,
                "calibration": calibration,
                "explain": CardExplain() if explain else None,
            }
        )
    (tmp / CARD_FILE).write_text(card.to_json())
    final = model_dir / str(version)
    os.rename(tmp, final)
    return final


def reference_predict(version_dir: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities straight from the SavedModel, independent of app code."""
    loaded = tf.saved_model.load(str(version_dir))
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    return np.asarray(out["probabilities"].numpy())
