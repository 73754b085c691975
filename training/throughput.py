"""Training throughput of the paper model over the whole data set: plain fit vs cached pipeline.

"plain" is the seed notebook's way: every epoch re-reads and re-decodes the image files
(``keras.utils.image_dataset_from_directory``, which also resizes every epoch). "cached"
decodes and resizes once (``training.data.load_images``) and feeds uint8 arrays from memory
through ``tf.data`` with prefetch, as ``training.train`` does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.data import load_images
from training.models import make_paper_model
from training.train import dump_json, set_seed


def _time_epochs(model: keras.Model, ds: tf.data.Dataset, n: int, epochs: int) -> list[float]:
    model.compile(optimizer="adam", loss="binary_crossentropy")
    times = []
    for epoch in range(epochs):
        start = time.monotonic()
        model.fit(ds, epochs=1, verbose=0, shuffle=False)  # the dataset shuffles itself
        times.append(time.monotonic() - start)
        print(
            f"  epoch {epoch + 1}/{epochs}: {times[-1]:.1f} s, {n / times[-1]:.0f} img/s",
            flush=True,
        )
    return times


def measure(
    data_root: Path, cache_dir: Path | None, epochs: int = 2, out: Path | None = None
) -> dict[str, Any]:
    set_seed(0)
    results: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    images = load_images(data_root, 256, 1.0, cache_dir)
    n = len(images.labels)
    results["n_images"] = n

    files: list[str] = [str(Path(data_root) / p) for p in images.paths]

    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.image.resize(img, (256, 256))  # the seed resized on every read, too
        return img, label

    labels = images.labels.astype(np.float32)
    plain = (
        tf.data.Dataset.from_tensor_slices((files, labels)).shuffle(n, seed=0).map(decode).batch(32)
    )
    print("plain fit (decode + resize every epoch, no prefetch):", flush=True)
    results["plain_seconds_per_epoch"] = _time_epochs(make_paper_model(), plain, n, epochs)

    cached = (
        tf.data.Dataset.from_tensor_slices((images.pixels, labels))
        .shuffle(n, seed=0)
        .batch(32)
        .prefetch(tf.data.AUTOTUNE)
    )
    print("cached uint8 arrays + tf.data prefetch:", flush=True)
    results["cached_seconds_per_epoch"] = _time_epochs(make_paper_model(), cached, n, epochs)
    # bfloat16 compute (AVX512-BF16 on this CPU), float32 weights: a speed option, not what
    # the committed models used.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        print("cached + mixed_bfloat16:", flush=True)
        results["cached_bf16_seconds_per_epoch"] = _time_epochs(
            make_paper_model(), cached, n, epochs
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    results["load_average_at_end"] = os.getloadavg()
    for key in ("plain", "cached", "cached_bf16"):
        best = min(results[f"{key}_seconds_per_epoch"])
        results[f"{key}_best_seconds_per_epoch"] = best
        results[f"{key}_best_images_per_second"] = n / best
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        dump_json(results, out)
    return results
