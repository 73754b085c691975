"""Serving CPU cost of each recipe in a protocol runs dir, for the study table's column.

    python -m experiments.serving_cost --runs-dir /work/runs/round2/runs --out serving.json

For every ``<digest>/`` with fold models: one member, run as the recipe serves it (its
test-time views as one batch), on batches of 32 random 450x450 cells resized inside a
``tf.function`` like the exported signature; ms per image = best of 5 timed batches x the
recipe's member count (5 folds). Single process, on whatever cores TensorFlow is given; the
numbers compare recipes measured in one run, not machines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.models import dihedral_views
from training.preprocess import resize_for_model


def member_ms(model: keras.Model, size: int, crop: float, views: int, batch: int = 32) -> float:
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (batch, 450, 450, 3), np.uint8))

    @tf.function(autograph=False)  # type: ignore[untyped-decorator]
    def serve(x: tf.Tensor) -> tf.Tensor:
        pixels = tf.cast(resize_for_model(x, size, crop), tf.float32)
        return model(dihedral_views(pixels, views) if views > 1 else pixels, training=False)

    serve(images)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        serve(images).numpy()
        best = min(best, time.perf_counter() - started)
    return 1000.0 * best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--views", type=int, default=None, help="override the recipes' views")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out: dict[str, float] = {}
    for folder in sorted(p for p in args.runs_dir.iterdir() if (p / "fold-seed0.keras").is_file()):
        config = json.loads(str(np.load(folder.with_suffix(".npz"))["config"]))
        views = args.views or (
            config.get("tta_views", 1) if config.get("test_time_dihedral") else 1
        )
        members = len(list(folder.glob("fold-seed*.keras")))
        model = keras.models.load_model(folder / "fold-seed0.keras", compile=False)
        ms = members * member_ms(model, config["input_size"], config["crop_fraction"], views)
        out[folder.name] = round(ms, 3)
        size = config["input_size"]
        print(f"{folder.name}: {size} px, {views} view(s) x {members}: {ms:.2f} ms/image")
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
