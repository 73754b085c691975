"""Training loop: cached uint8 pixels -> tf.data -> Keras fit; progress and epoch choice."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import keras
import numpy as np
import tensorflow as tf

from training.data import CachedImages
from training.models import (
    Architecture,
    ImprovedOptions,
    ModelSpec,
    check_choice,
    make_model,
    spec_for,
)

if TYPE_CHECKING:
    from training.pretrain import PretrainData

OptimizerName = Literal["adam", "adamw"]  # "adam": the paper's
# "best_val_auc": keep the weights of the epoch with the best validation AUC; "last": the
# final epoch's (the paper trains a fixed 20 epochs)
EpochSelection = Literal["best_val_auc", "last"]
# "pbc": pretrain the conv blocks as a PBC cell-type classifier first (training/pretrain.py)
Pretrain = Literal["none", "pbc"]
# "single": ship one model trained on the final split; "cv_ensemble": ship the mean of the
# cross-validation fold models, threshold chosen on their pooled out-of-fold predictions
ShipMode = Literal["single", "cv_ensemble"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run; saved with it, and enough to reproduce it.

    Choices are checked when the config is built, so a typo fails before any data is read.
    """

    architecture: Architecture = "improved"
    input_size: int = 128
    crop_fraction: float = 0.75
    epochs: int = 30
    batch_size: int = 32
    optimizer: OptimizerName = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    cosine_decay: bool = True
    label_smoothing: float = 0.05
    class_weights: bool = True
    augment: bool = True
    select_epoch: EpochSelection = "best_val_auc"
    seed: int = 0
    improved: ImprovedOptions = field(default_factory=ImprovedOptions)
    blur_noise: bool = False
    colour_jitter: float = 1.0  # scales the colour-gain ranges; >1 adds saturation jitter
    test_time_dihedral: bool = False
    tta_views: int = 8  # with test_time_dihedral: 4 = quarter turns, 8 = turns and mirrors
    ship: ShipMode = "single"
    validation_fraction: float = 0.15
    validation_max_share: float = 0.25
    # Stain jitter in HED space (Tellez et al. 2019): each of haematoxylin, eosin and DAB is
    # scaled by U(1-h, 1+h) and shifted by U(-h, h) per image; 0 = off (0.05 is "HED-light").
    hed_jitter: float = 0.0
    # Zoom by U(1-s, 1+s) about the centre; 0 = off. Off by default because cell size is a
    # real feature (blasts are larger); a small s asks whether donor-to-donor size shifts hurt.
    scale_jitter: float = 0.0
    pretrain: Pretrain = "none"
    pretrain_epochs: int = 10

    def __post_init__(self) -> None:
        check_choice("architecture", self.architecture, Architecture)
        check_choice("optimizer", self.optimizer, OptimizerName)
        check_choice("select_epoch", self.select_epoch, EpochSelection)
        check_choice("ship", self.ship, ShipMode)
        check_choice("pretrain", self.pretrain, Pretrain)
        if self.pretrain != "none" and self.architecture != "improved":
            raise ValueError("pretrain needs the improved architecture (its conv blocks)")
        if self.pretrain_epochs < 1:
            raise ValueError("pretrain_epochs must be positive")
        if self.tta_views not in (1, 4, 8):
            raise ValueError(f"tta_views must be 1, 4 or 8, not {self.tta_views}")
        if self.epochs < 1 or self.batch_size < 1 or self.input_size < 1:
            raise ValueError("epochs, batch_size and input_size must be positive")
        if not 0.0 <= self.hed_jitter < 1.0 or not 0.0 <= self.scale_jitter < 1.0:
            raise ValueError("hed_jitter and scale_jitter must be in [0, 1)")

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.architecture, self.input_size, self.crop_fraction)

    def to_dict(self) -> dict[str, Any]:
        """All fields, except options added after recipes were cached and cards written that
        are at their default (off): the dict, and so the protocol's config digest and the
        cards, of every recipe that does not use them stay what they were."""
        d = dataclasses.asdict(self)
        for name in OMITTED_AT_DEFAULT:
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        """Read a saved config: nested (``improved: {...}``) or the flat layout of the
        committed cards, where the improved model's options sit beside the others."""
        d = dict(d)
        option_names = {f.name for f in dataclasses.fields(ImprovedOptions)}
        improved = dict(d.pop("improved", {}))
        improved |= {k: d.pop(k) for k in option_names & set(d)}
        return TrainConfig(**d, improved=ImprovedOptions(**improved))


OMITTED_AT_DEFAULT = ("hed_jitter", "scale_jitter", "pretrain", "pretrain_epochs")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def paper_config(**overrides: Any) -> TrainConfig:
    """The seed notebook's recipe: 256x256, /255, Adam 1e-3, 20 epochs, no tricks."""
    spec = spec_for("paper")
    base = TrainConfig(
        architecture="paper",
        input_size=spec.input_size,
        crop_fraction=spec.crop_fraction,
        epochs=20,
        batch_size=32,
        optimizer="adam",
        learning_rate=1e-3,
        weight_decay=0.0,
        cosine_decay=False,
        label_smoothing=0.0,
        class_weights=False,
        augment=False,
        select_epoch="last",
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    selected_epoch: int
    seconds: float
    images_per_second: float
    seconds_per_epoch: float


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def _blur(x: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    radius = 3
    r = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(r / tf.maximum(sigma, 1e-3)))
    k = k / tf.reduce_sum(k)
    kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    y = tf.nn.depthwise_conv2d(x[None], kx, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(y, ky, [1, 1, 1, 1], "SAME")[0]


# skimage.color's rgb_from_hed (Ruifrok & Johnston): rows are the RGB optical densities of
# haematoxylin, eosin and DAB; rgb2hed is its inverse on log intensities scaled by log(1e-6).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = float(np.log(1e-6))


def hed_jitter(x: tf.Tensor, alpha: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
    """[..., 3] RGB in [0, 255] -> HED, ``hed * alpha + beta`` per channel, -> RGB.

    The same transform as ``skimage.color.rgb2hed``/``hed2rgb`` except that stains are not
    clipped at zero, so alpha=1, beta=0 gives the input back. Black (background) pixels are
    the caller's to restore: in optical density they are a heavy stain, not an absence.
    """
    rgb = tf.maximum(x / 255.0, 1e-6)
    hed = tf.linalg.matmul(
        tf.reshape(tf.math.log(rgb) / _LOG_ADJUST, [-1, 3]),
        tf.constant(HED_FROM_RGB, tf.float32),
    )
    hed = hed * tf.reshape(alpha, [1, 3]) + tf.reshape(beta, [1, 3])
    log_rgb = tf.linalg.matmul(hed * _LOG_ADJUST, tf.constant(RGB_FROM_HED, tf.float32))
    return tf.reshape(tf.clip_by_value(tf.exp(log_rgb), 0.0, 1.0) * 255.0, tf.shape(x))


def zoom_about_centre(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """[S, S, C] scaled by ``factor`` about the centre, cropped or black-padded back to S."""
    size = tf.shape(x)[0]
    new = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
    scaled = tf.image.resize(x, [new, new], "bilinear", antialias=True)
    return tf.image.resize_with_crop_or_pad(scaled, size, size)


def make_augment(
    blur_noise: bool, colour_jitter: float = 1.0, hed: float = 0.0, scale: float = 0.0
) -> Any:
    def augment(
        pixels: tf.Tensor, label: tf.Tensor, weight: tf.Tensor, key: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Flips, 90-degree turns, mild colour gains; optionally zoom and HED stain jitter.

        Gains are multiplicative so the black background stays black; HED jitter and blur
        re-apply the foreground mask for the same reason. Optional blur and
        noise blunt the per-donor focus/sensor differences a network can latch onto.
        Every random draw is stateless, seeded from ``key`` (one per element, from a seeded
        random dataset), so parallel mapping cannot reorder draws: same seed, same run.
        """

        def seed(i: int) -> tf.Tensor:
            return tf.stack([key, tf.constant(i, tf.int64)])

        def uniform(i: int, shape: list[int], low: float, high: float) -> tf.Tensor:
            return tf.random.stateless_uniform(shape, seed(i), low, high)

        x = tf.cast(pixels, tf.float32)
        x = tf.image.stateless_random_flip_left_right(x, seed(0))
        x = tf.image.stateless_random_flip_up_down(x, seed(1))
        x = tf.image.rot90(x, k=tf.random.stateless_uniform([], seed(2), 0, 4, dtype=tf.int32))
        if scale > 0.0:
            x = tf.ensure_shape(
                zoom_about_centre(x, uniform(9, [], 1.0 - scale, 1.0 + scale)), x.shape
            )
        if hed > 0.0:
            foreground = tf.cast(tf.reduce_max(x, axis=-1, keepdims=True) > 10.0, tf.float32)
            alpha, beta = uniform(10, [3], 1.0 - hed, 1.0 + hed), uniform(11, [3], -hed, hed)
            x = hed_jitter(x, alpha, beta) * foreground
        c = colour_jitter
        gain = uniform(3, [1, 1, 3], 1.0 - 0.1 * c, 1.0 + 0.1 * c) * uniform(
            4, [], 1.0 - 0.15 * c, 1.0 + 0.15 * c
        )
        x = x * gain
        if c > 1.0:  # saturation: pull towards / push away from the pixel's grey level
            grey = tf.reduce_mean(x, axis=-1, keepdims=True)
            x = grey + (x - grey) * uniform(5, [], 1.0 - 0.2 * c, 1.0 + 0.2 * c)
        if blur_noise:
            foreground = tf.cast(tf.reduce_max(x, axis=-1, keepdims=True) > 10.0, tf.float32)
            x = _blur(x, uniform(6, [], 0.01, 1.2))
            x = x + tf.random.stateless_normal(tf.shape(x), seed(7)) * uniform(8, [], 0.0, 4.0)
            x = x * foreground
        x = tf.clip_by_value(x, 0.0, 255.0)
        return x, label, weight

    return augment


def make_dataset(
    images: CachedImages,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    class_weights: dict[int, float] | None,
    seed: int,
    blur_noise: bool = False,
    colour_jitter: float = 1.0,
    hed: float = 0.0,
    scale: float = 0.0,
) -> tf.data.Dataset:
    labels = images.labels.astype(np.float32)
    weights = (
        np.array([class_weights[int(y)] for y in images.labels], dtype=np.float32)
        if class_weights
        else np.ones(len(labels), dtype=np.float32)
    )
    ds = tf.data.Dataset.from_tensor_slices((images.pixels, labels, weights))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if augment:
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        fn = make_augment(blur_noise, colour_jitter, hed, scale)
        ds = tf.data.Dataset.zip((ds, keys)).map(
            lambda item, key: fn(*item, key),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class Progress(keras.callbacks.Callback):  # type: ignore[misc]
    """One line per epoch: metrics, images/s, ETA; keeps the weights of the chosen epoch."""

    def __init__(self, n_train: int, epochs: int, select_epoch: str, label: str) -> None:
        super().__init__()
        self.n_train, self.epochs, self.select_epoch, self.label = (
            n_train,
            epochs,
            select_epoch,
            label,
        )
        self.best_auc = -math.inf
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        dt = time.monotonic() - self._start
        self.epoch_seconds.append(dt)
        val_auc = float(logs.get("val_auc", float("nan")))
        if self.select_epoch == "best_val_auc" and val_auc > self.best_auc:
            self.best_auc, self.best_epoch = val_auc, epoch + 1
            self.best_weights = self.model.get_weights()
        eta = (self.epochs - epoch - 1) * float(np.mean(self.epoch_seconds))
        val = ""
        if "val_loss" in logs:  # pretraining has no validation set
            val = f"val_loss {logs['val_loss']:.4f} val_auc {val_auc:.3f} "
        print(
            f"[{self.label}] epoch {epoch + 1}/{self.epochs} loss {logs.get('loss', 0):.4f} "
            f"acc {logs.get('accuracy', 0):.3f} {val}"
            f"| {dt:.1f} s, {self.n_train / dt:.0f} img/s, ETA {eta:.0f} s",
            flush=True,
        )


def make_optimizer(config: TrainConfig, steps: int) -> keras.optimizers.Optimizer:
    lr: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.cosine_decay:
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.02)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)


def train_model(
    config: TrainConfig,
    train: CachedImages,
    validation: CachedImages,
    label: str = "train",
    pretrain_data: PretrainData | None = None,
    pretrain_seed: int | None = None,
) -> TrainResult:
    """Fit ``config`` on ``train``; with ``pretrain="pbc"`` the conv blocks start from the
    backbone pretrained on ``pretrain_data`` with ``pretrain_seed`` (default: the seed)."""
    backbone_weights = None
    if config.pretrain == "pbc":
        from training.pretrain import pretrained_backbone

        if pretrain_data is None:
            raise ValueError("pretrain='pbc' needs pretrain_data (where the PBC cells are)")
        seed = config.seed if pretrain_seed is None else pretrain_seed
        # Before set_seed: a cache hit and a fresh pretraining leave the same random state.
        backbone_weights, _ = pretrained_backbone(config, pretrain_data, seed)
    set_seed(config.seed)
    model = make_model(config.spec, config.improved)
    if backbone_weights is not None:
        from training.pretrain import load_backbone

        load_backbone(model, backbone_weights)
    steps = math.ceil(len(train.labels) / config.batch_size) * config.epochs
    model.compile(
        optimizer=make_optimizer(config, steps),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
        weighted_metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
        metrics=[keras.metrics.AUC(name="auc")],
    )
    class_weights = None
    if config.class_weights:
        counts = np.bincount(train.labels, minlength=2).astype(float)
        class_weights = {k: float(counts.sum() / (2 * counts[k])) for k in (0, 1)}
    train_ds = make_dataset(
        train,
        config.batch_size,
        True,
        config.augment,
        class_weights,
        config.seed,
        config.blur_noise,
        config.colour_jitter,
        config.hed_jitter,
        config.scale_jitter,
    )
    val_ds = make_dataset(validation, 128, False, False, None, config.seed)
    progress = Progress(len(train.labels), config.epochs, config.select_epoch, label)
    start = time.monotonic()
    fit = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        verbose=0,
        callbacks=[progress],
        shuffle=False,  # train_ds reshuffles itself every epoch
    )
    seconds = time.monotonic() - start
    selected = config.epochs
    if config.select_epoch == "best_val_auc" and progress.best_weights is not None:
        model.set_weights(progress.best_weights)
        selected = progress.best_epoch
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    per_epoch = float(np.median(progress.epoch_seconds))
    return TrainResult(
        model,
        history,
        len(progress.epoch_seconds),
        selected,
        seconds,
        len(train.labels) / per_epoch,
        per_epoch,
    )


def predict_p_all(model: keras.Model, images: CachedImages, batch_size: int = 128) -> np.ndarray:
    if len(images.labels) == 0:
        return np.zeros(0, dtype=np.float32)
    out = []
    for i in range(0, len(images.labels), batch_size):
        batch = tf.convert_to_tensor(images.pixels[i : i + batch_size], tf.float32)
        out.append(np.asarray(model(batch, training=False)).reshape(-1))
    return np.concatenate(out).astype(np.float32)


def dump_json(obj: Any, path: Any) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
