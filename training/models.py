"""Model factories. Every model takes uint8-valued pixels at its input size and outputs P(all).

Scaling (x/255) and, for the improved model, per-image stain normalisation are layers inside
the model; resizing happens in the exported signature via :mod:`training.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf
from keras import layers


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and its fixed input geometry."""

    architecture: str  # "paper" or "improved"
    input_size: int
    crop_fraction: float


def spec_for(
    architecture: str, input_size: int | None = None, crop_fraction: float | None = None
) -> ModelSpec:
    if architecture == "paper":
        return ModelSpec("paper", input_size or 256, crop_fraction or 1.0)
    if architecture == "improved":
        return ModelSpec("improved", input_size or 128, crop_fraction or 0.75)
    raise ValueError(f"unknown architecture {architecture!r}")


@keras.saving.register_keras_serializable(package="training")
class ForegroundStandardization(layers.Layer):  # type: ignore[misc]
    """Per image and channel, standardise the cell's (non-black) pixels; background stays 0.

    Staining differs from patient to patient and is the main shift between subjects; removing
    each image's own colour mean and spread over the cell takes most of it out.
    """

    def __init__(self, threshold: float = 10.0 / 255.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def call(self, x: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(tf.reduce_max(x, axis=-1, keepdims=True) > self.threshold, x.dtype)
        count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2], keepdims=True), 1.0)
        mean = tf.reduce_sum(x * mask, axis=[1, 2], keepdims=True) / count
        var = tf.reduce_sum(tf.square(x - mean) * mask, axis=[1, 2], keepdims=True) / count
        return (x - mean) / tf.sqrt(var + 1e-4) * mask

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


def make_paper_model(input_size: int = 256) -> keras.Model:
    """The seed notebook's CNN, layer for layer (3x3 valid convs, 2x2 max pools, L2 0.01)."""
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for filters in (16, 32, 16, 32, 16):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01))(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_all")(x)
    return keras.Model(inputs, outputs, name="paper_cnn")


def make_improved_model(
    input_size: int = 128, widths: tuple[int, ...] = (16, 32, 64, 128, 256), dropout: float = 0.3
) -> keras.Model:
    """Compact BN CNN on stain-normalised pixels with global average pooling.

    One 3x3 conv per resolution keeps it near 80 M multiply-adds at 128 px (the paper model
    is ~120 M at 256 px), so training fits the CPU budget and serving stays cheap.
    """
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = ForegroundStandardization()(x)
    for filters in widths:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_all")(x)
    return keras.Model(inputs, outputs, name="improved_cnn")


def make_model(spec: ModelSpec) -> keras.Model:
    if spec.architecture == "paper":
        return make_paper_model(spec.input_size)
    return make_improved_model(spec.input_size)
