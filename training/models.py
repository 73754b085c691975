"""Model factories. Every model takes uint8-valued pixels at its input size and outputs P(all).

Scaling (x/255) and, for the improved model, per-image stain normalisation are layers inside
the model; resizing happens in the exported signature via :mod:`training.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import keras
import tensorflow as tf
from keras import layers

Architecture = Literal["paper", "improved"]


def check_choice(name: str, value: object, choices: Any) -> None:
    """Raise ValueError unless ``value`` is one of the ``Literal`` type ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and its fixed input geometry."""

    architecture: Architecture
    input_size: int
    crop_fraction: float

    def __post_init__(self) -> None:
        check_choice("architecture", self.architecture, Architecture)


@dataclass(frozen=True)
class ImprovedOptions:
    """The variant of :func:`make_improved_model` (ignored by the paper architecture)."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    dropout: float = 0.3
    stain_normalization: bool = True
    shape_features: bool = False
    grayscale: bool = False
    silhouette: bool = False
    area_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths:
            raise ValueError("widths needs at least one conv block")


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


@keras.saving.register_keras_serializable(package="training")
class CellShapeFeatures(layers.Layer):  # type: ignore[misc]
    """Whole-cell descriptors from the raw [0, 1] pixels: area, colour mean and spread.

    Cell area alone separates blasts from normal cells about as well as the paper CNN on
    unseen subjects (blasts are larger; the crop is fixed, so pixel area is comparable).
    """

    def __init__(
        self, threshold: float = 10.0 / 255.0, area_only: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.area_only = area_only

    def call(self, x: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(tf.reduce_max(x, axis=-1, keepdims=True) > self.threshold, x.dtype)
        area = tf.reduce_mean(mask, axis=[1, 2])
        if self.area_only:
            return area * 4.0
        count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2]), 1.0)
        mean = tf.reduce_sum(x * mask, axis=[1, 2]) / count
        centred = (x - mean[:, None, None, :]) * mask
        std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=[1, 2]) / count + 1e-6)
        return tf.concat([area * 4.0, mean, std], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold, "area_only": self.area_only}


def make_improved_model(
    input_size: int = 128, options: ImprovedOptions | None = None
) -> keras.Model:
    """Compact BN CNN on stain-normalised pixels with global average pooling.

    One 3x3 conv per resolution keeps it cheap (~80 M multiply-adds at 128 px with the
    default widths; the paper model is ~120 M at 256 px). Optional whole-cell shape/colour
    descriptors join the pooled features before the classifier.
    """
    o = options or ImprovedOptions()
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    scaled = layers.Rescaling(1.0 / 255.0)(inputs)
    x = scaled
    if o.silhouette:  # the cell's outline only: shape and size, no stain or texture
        x = layers.Lambda(
            lambda t: tf.cast(tf.reduce_max(t, axis=-1, keepdims=True) > 10.0 / 255.0, t.dtype),
            name="silhouette",
        )(x)
    if o.grayscale:  # colour carries donor-specific staining more than morphology
        x = layers.Lambda(lambda t: tf.reduce_mean(t, axis=-1, keepdims=True), name="gray")(x)
    x = ForegroundStandardization()(x) if o.stain_normalization else x
    for filters in o.widths:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    if o.shape_features:
        features = layers.BatchNormalization()(CellShapeFeatures(area_only=o.area_only)(scaled))
        x = layers.Concatenate()([x, features])
    x = layers.Dropout(o.dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_all")(x)
    return keras.Model(inputs, outputs, name="improved_cnn")


def make_model(spec: ModelSpec, options: ImprovedOptions | None = None) -> keras.Model:
    if spec.architecture == "paper":
        return make_paper_model(spec.input_size)
    return make_improved_model(spec.input_size, options)


def dihedral_views(x: tf.Tensor, views: int = 8) -> tf.Tensor:
    """[N, S, S, C] -> [views*N, S, S, C], view-major: the 4 quarter turns, then (views=8)
    the same mirrored; views=1 is the image itself."""
    if views not in (1, 4, 8):
        raise ValueError(f"views must be 1, 4 or 8, not {views}")
    out = []
    for flip in (False, True)[: 1 + (views == 8)]:
        for k in range(min(views, 4)):
            t = tf.image.rot90(x, k=k)
            out.append(tf.image.flip_left_right(t) if flip else t)
    return tf.concat(out, axis=0)


@keras.saving.register_keras_serializable(package="training")
class DihedralAverage(keras.Model):  # type: ignore[misc]
    """Inference wrapper: mean P(all) over 90-degree turns (4 views) or turns and mirror
    images (8 views) of the input.

    A cell has no canonical orientation, so averaging over them removes orientation noise
    from the prediction and makes it invariant to those turns. The views go through the
    network as one batch of views*N (one call instead of one per view), faster on CPU.
    """

    def __init__(self, model: keras.Model, views: int = 8, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", f"{model.name}_dihedral"), **kwargs)
        self.inner = model
        self.views = views

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        n = tf.shape(x)[0]
        p = self.inner(dihedral_views(x, self.views), training=training)
        return tf.reduce_mean(tf.reshape(p, [self.views, n, -1]), axis=0)


def with_dihedral_average(model: keras.Model, views: int = 8) -> keras.Model:
    return DihedralAverage(model, views)


@keras.saving.register_keras_serializable(package="training")
class MeanEnsemble(keras.Model):  # type: ignore[misc]
    """P(all) averaged over member models that all take the same input.

    Used to ship the cross-validation fold models together: each member was trained without
    one group of normal donors, so together they have seen every donor while no single
    member's quirks decide a prediction.
    """

    def __init__(self, members: list[keras.Model], **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "mean_ensemble"), **kwargs)
        self.members = list(members)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        outputs = [m(x, training=training) for m in self.members]
        return tf.add_n(outputs) / float(len(outputs))
