"""In-process measurements: the model's own limit, with no HTTP in the way.

Run as a subprocess by ``python -m bench`` (so its TensorFlow threads and memory are its own):

    python -m bench.ceiling --model-dir model_store/<name>/<version> --image x.bmp --out c.json

Measures, on already-decoded images of the request's size:
- the exported signature (``serving_default``, a compiled ``tf.function``) at batch sizes
  1..64: images/s and per-call latency; the best of these is the "ceiling";
- one ``model.predict`` call through Keras (the naive baseline's path);
- decoding one BMP with PIL, and resizing one image to the model's input size (the resize
  the model itself performs, measured on its own);
- optionally the same SavedModel converted to TensorFlow Lite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from contract.card import CARD_FILE, ModelCard
from contract.imaging import decode_image

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def _repeat_ms(
    fn: Callable[[], object], min_seconds: float, min_calls: int = 5
) -> tuple[list[float], float]:
    """Call ``fn`` until ``min_seconds`` and ``min_calls`` are reached: per-call wall ms, and
    the process CPU seconds (all threads) the calls took."""
    times: list[float] = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, time.process_time() - cpu0


def _summary(measured: tuple[list[float], float], batch: int = 1) -> dict[str, float]:
    times_ms, cpu_s = measured
    total_s = sum(times_ms) / 1000
    return {
        "calls": len(times_ms),
        "median_ms": statistics.median(times_ms),
        "p95_ms": float(np.percentile(times_ms, 95)),
        "images_per_s": batch * len(times_ms) / total_s,
        "cpu_ms_per_image": 1000 * cpu_s / (batch * len(times_ms)),
    }


def decode_rgb(data: bytes) -> np.ndarray:
    """The service's decoder (contract.imaging), as the service calls it."""
    return decode_image(data, 10**9, max_side=450).pixels


def measure_preprocessing(data: bytes, size: tuple[int, int], seconds: float) -> dict[str, Any]:
    import tensorflow as tf

    pixels = decode_rgb(data)
    tensor = tf.constant(pixels[np.newaxis])
    resize = tf.function(lambda x: tf.image.resize(x, size, method="bilinear", antialias=True))
    resize(tensor)
    return {
        "image_shape": list(pixels.shape),
        "body_bytes": len(data),
        "decode_pil": _summary(_repeat_ms(lambda: decode_rgb(data), seconds)),
        "resize_to": list(size),
        "resize_tf_bilinear": _summary(_repeat_ms(lambda: resize(tensor).numpy(), seconds)),
        "resize_pil_bilinear": _summary(
            _repeat_ms(
                lambda: Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR), seconds
            )
        ),
    }


def measure_signature(model_dir: str, pixels: np.ndarray, seconds: float) -> dict[str, Any]:
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    results: dict[str, Any] = {}
    for batch in BATCH_SIZES:
        images = tf.constant(np.repeat(pixels[np.newaxis], batch, axis=0))
        for _ in range(2):  # first calls trace and allocate; never timed
            signature(images=images)["probabilities"].numpy()

        def call(x: Any = images) -> object:
            return signature(images=x)["probabilities"].numpy()

        measured = _repeat_ms(call, seconds)
        results[str(batch)] = _summary(measured, batch)
    best = max(results, key=lambda b: results[b]["images_per_s"])
    return {
        "by_batch": results,
        "best_batch": int(best),
        "best_images_per_s": results[best]["images_per_s"],
        "single_image_threads": {
            str(n): measure_single_image_threads(signature, pixels, n, seconds) for n in (2, 4)
        },
    }


def measure_single_image_threads(
    signature: Any, pixels: np.ndarray, threads: int, seconds: float
) -> dict[str, float]:
    """One image per call from ``threads`` threads at once: the service's per-image mode
    (``LEUK_EXACT_BATCHING=true``)."""
    import tensorflow as tf

    image = tf.constant(pixels[np.newaxis])
    counts = [0] * threads
    stop = time.perf_counter() + max(seconds, 1.0)

    def worker(index: int) -> None:
        while time.perf_counter() < stop:
            signature(images=image)["probabilities"].numpy()
            counts[index] += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"images_per_s": sum(counts) / wall, "cpu_ms_per_image": 1000 * cpu / sum(counts)}


def measure_keras_predict(model_dir: str, pixels: np.ndarray, seconds: float) -> dict[str, float]:
    from bench.naive_app import _load_keras_model

    model = _load_keras_model(model_dir)
    batch = pixels[np.newaxis]
    for _ in range(2):
        model.predict(batch, verbose=0)
    return _summary(_repeat_ms(lambda: model.predict(batch, verbose=0), seconds))


def _tflite_by_batch(
    flatbuffer: bytes, pixels: np.ndarray, seconds: float, batch_sizes: tuple[int, ...]
) -> dict[str, Any]:
    import tensorflow as tf

    results: dict[str, Any] = {}
    for batch in batch_sizes:
        interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count())
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], [batch, *pixels.shape])
        interpreter.allocate_tensors()
        out_index = interpreter.get_output_details()[0]["index"]
        images = np.repeat(pixels[np.newaxis], batch, axis=0)

        def call(
            interp: Any = interpreter,
            x: np.ndarray = images,
            i: int = inp["index"],
            o: int = out_index,
        ) -> object:
            interp.set_tensor(i, x)
            interp.invoke()
            return interp.get_tensor(o)

        call()
        results[str(batch)] = _summary(_repeat_ms(call, seconds), batch)
    return results


def _best(by_batch: dict[str, Any]) -> dict[str, Any]:
    best = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
    return {"best_batch": int(best), "best_images_per_s": by_batch[best]["images_per_s"]}


def measure_tflite(model_dir: str, pixels: np.ndarray, seconds: float) -> dict[str, Any]:
    """The whole serving signature converted to TFLite (builtins, then Select TF ops)."""
    import tensorflow as tf

    t0 = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_saved_model(model_dir)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,  # ops TFLite lacks run through the Flex delegate
    ]
    flatbuffer = converter.convert()
    convert_s = time.perf_counter() - t0
    by_batch = _tflite_by_batch(flatbuffer, pixels, seconds, BATCH_SIZES)
    return {
        "convert_s": convert_s,
        "flatbuffer_bytes": len(flatbuffer),
        "by_batch": by_batch,
        **_best(by_batch),
    }


CORE_BATCH_SIZES = (1, 4, 16, 64)


def served_network(card: ModelCard) -> tuple[Any, str, dict[str, Any]]:
    """The network the version serves (after crop and resize), rebuilt from its card with
    untrained weights: speed does not depend on the weights' values, only on ops and shapes.

    A ``ship=cv_ensemble`` version is the mean of its cross-validation fold models, so it is
    rebuilt as that many members averaged. Returns the model, its label and its options.
    """
    from training import models
    from training.train import TrainConfig

    config = TrainConfig.from_dict(card.training.config)

    def member() -> Any:
        model = models.make_model(config.spec, config.improved)
        if config.test_time_dihedral:
            model = models.with_dihedral_average(model, config.tta_views)
        return model

    options: dict[str, Any] = {"test_time_dihedral": config.test_time_dihedral}
    if config.architecture == "improved":
        options = dataclasses.asdict(config.improved) | options
    label = config.architecture
    if config.ship == "cv_ensemble":
        folds = (card.metrics.cross_validation or {}).get("folds", [])
        n_members = len(folds) or 3  # three leave-one-normal-donor-out folds
        options["cv_ensemble_members"] = n_members
        label = f"{config.architecture}, cv_ensemble of {n_members} members"
        return models.MeanEnsemble([member() for _ in range(n_members)]), label, options
    return member(), label, options


def measure_core_runtimes(card: ModelCard, seconds: float) -> dict[str, Any]:
    """The network alone (after crop/resize), TensorFlow vs TFLite: what the store serves.

    Used when the whole signature cannot be converted (e.g. antialiased resize has no TFLite
    kernel). See :func:`served_network` for how the network is rebuilt.
    """
    import tensorflow as tf

    model, label, options = served_network(card)
    size = card.input.model_input_size[0]
    call = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [call.get_concrete_function()], model
    )
    flatbuffer = converter.convert()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    tf_by_batch: dict[str, Any] = {}
    for batch in CORE_BATCH_SIZES:
        x = tf.constant(np.repeat(pixels[np.newaxis], batch, axis=0))

        def run(x: Any = x) -> object:
            return call(x).numpy()

        run()
        tf_by_batch[str(batch)] = _summary(_repeat_ms(run, seconds), batch)
    tflite_by_batch = _tflite_by_batch(flatbuffer, pixels, seconds, CORE_BATCH_SIZES)
    return {
        "architecture": label,
        "options": options,
        "input_size": size,
        "tensorflow": {"by_batch": tf_by_batch, **_best(tf_by_batch)},
        "tflite": {"by_batch": tflite_by_batch, **_best(tflite_by_batch)},
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # Converter errors put the cause ("... custom ops ... Custom ops: X") deep in a long dump.
    custom = [line for line in text.splitlines() if line.startswith("Custom ops:")]
    head = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {head}" + (f" ({custom[0]})" if custom else "")


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--image", required=True, help="a real C-NMC BMP")
    parser.add_argument("--input-size", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--seconds", type=float, default=1.5, help="timing window per point")
    parser.add_argument("--tflite", action="store_true", help="also measure a TFLite conversion")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import tensorflow as tf

    data = Path(args.image).read_bytes()
    pixels = decode_rgb(data)
    cpu0 = time.process_time()
    result: dict[str, Any] = {
        "tensorflow": tf.__version__,
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset: on)"),
        },
        "preprocessing": measure_preprocessing(data, tuple(args.input_size), args.seconds),
        "signature": measure_signature(args.model_dir, pixels, args.seconds),
        "keras_predict_batch1": measure_keras_predict(args.model_dir, pixels, args.seconds),
    }
    result["vm_hwm_kib_before_tflite"] = _vm_hwm_kib()
    if args.tflite:
        try:
            result["tflite"] = measure_tflite(args.model_dir, pixels, args.seconds)
        except Exception as exc:  # report, don't hide: the comparison is optional
            result["tflite"] = {"error": _first_line(exc)}
        card_path = Path(args.model_dir) / CARD_FILE
        if card_path.exists():
            try:
                card = ModelCard.model_validate_json(card_path.read_text())
                result["core_runtimes"] = measure_core_runtimes(card, args.seconds)
            except Exception as exc:
                result["core_runtimes"] = {"error": _first_line(exc)}
    result["cpu_seconds"] = time.process_time() - cpu0
    result["vm_hwm_kib"] = _vm_hwm_kib()
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
