"""A loaded SavedModel behind a small load/predict interface.

The concrete ``serving_default`` function is called directly (never ``model.predict``): its
input signature has a ``None`` batch and image size, so no call ever retraces. Only the
batcher's worker thread calls :meth:`ModelRuntime.predict`.

A version whose card has an ``ood_check`` also returns a per-image out-of-distribution
score; it travels as one more column after the probabilities, so a row is everything the
model said about one image and batching (which splits results by row) needs no second path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray


class ModelRuntime(Protocol):
    def predict(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """uint8 [N, H, W, 3] RGB -> float32 [N, n_labels] probabilities, or [N, n_labels + 1]
        with the out-of-distribution score last when the version has one."""
        ...


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Thread pools must be set before TensorFlow's runtime starts; later calls are ignored."""
    import tensorflow as tf

    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        pass  # runtime already initialised (e.g. a second app in the same process)


class SavedModelRuntime:
    """``serving_default`` of one SavedModel version."""

    def __init__(
        self,
        function: Any,
        input_name: str,
        output_name: str,
        n_labels: int,
        score_name: str | None = None,
    ) -> None:
        self._function = function
        self._input_name = input_name
        self._output_name = output_name
        self._n_labels = n_labels
        self._score_name = score_name

    @classmethod
    def load(
        cls,
        path: Path,
        signature: str,
        input_name: str,
        output_name: str,
        n_labels: int,
        score_name: str | None = None,
        also_required: Mapping[str, Sequence[str]] | None = None,
    ) -> SavedModelRuntime:
        """``score_name``: a float32 [N] output returned as the last column of each row.
        ``also_required``: outputs other signatures must have (checked here, at load, so a
        card that asks for what the SavedModel lacks fails the version with a reason)."""
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        if signature not in loaded.signatures:
            raise ValueError(f"SavedModel has no signature {signature!r}")
        function = loaded.signatures[signature]
        inputs = function.structured_input_signature[1]
        if input_name not in inputs or inputs[input_name].dtype != tf.uint8:
            raise ValueError(f"signature {signature!r} has no uint8 input {input_name!r}")
        if output_name not in function.structured_outputs:
            raise ValueError(f"signature {signature!r} has no output {output_name!r}")
        required = {signature: [score_name] if score_name else []}
        for other, names in (also_required or {}).items():
            required.setdefault(other, []).extend(names)
        for name, outputs in required.items():
            _check_score_outputs(loaded.signatures, name, outputs)
        runtime = cls(function, input_name, output_name, n_labels, score_name)
        # Keep the loaded object alive: the concrete function only weakly references variables.
        runtime._loaded = loaded  # type: ignore[attr-defined]
        return runtime

    def predict(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        import tensorflow as tf

        outputs = self._function(**{self._input_name: tf.constant(images)})
        probabilities = np.asarray(outputs[self._output_name].numpy(), dtype=np.float32)
        if probabilities.shape != (images.shape[0], self._n_labels):
            raise ValueError(f"model returned shape {probabilities.shape}")
        if self._score_name is None:
            return probabilities
        scores = np.asarray(outputs[self._score_name].numpy(), dtype=np.float32)
        if scores.shape != (images.shape[0],):
            raise ValueError(f"model returned {self._score_name!r} of shape {scores.shape}")
        return np.concatenate([probabilities, scores[:, None]], axis=1)


def _check_score_outputs(signatures: Any, signature: str, names: Sequence[str]) -> None:
    """Each of ``names`` is a float32 [N] output of ``signature``."""
    import tensorflow as tf

    if not names:
        return
    if signature not in signatures:
        raise ValueError(f"SavedModel has no signature {signature!r}")
    outputs = signatures[signature].structured_outputs
    for name in names:
        spec = outputs.get(name)
        if spec is None:
            raise ValueError(
                f"signature {signature!r} has no output {name!r} (the card's ood_check asks for it)"
            )
        if spec.dtype != tf.float32 or (spec.shape.rank is not None and spec.shape.rank != 1):
            raise ValueError(
                f"signature {signature!r} output {name!r} is {spec.dtype.name} "
                f"{spec.shape}, not float32 [N]"
            )


def tune_malloc() -> bool:
    """Keep large per-request buffers in glibc's heap instead of fresh mmaps.

    A 450x450 RGB image is ~600 KB, above glibc's default mmap threshold, so every decode
    mmaps and page-faults new memory: measured 4.4 ms -> ~1 ms per BMP decode with these
    thresholds. Same effect as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ in the
    environment. No-op (False) where glibc is absent.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok_mmap = libc.mallopt(m_mmap_threshold, 32 << 20)
        ok_trim = libc.mallopt(m_trim_threshold, 128 << 20)
    except (OSError, AttributeError):
        return False
    return bool(ok_mmap and ok_trim)
