"""The one implementation of image preprocessing, shared by the training cache and the export.

Both paths call :func:`resize_for_model`, so the pixels the network saw in training are
bit-identical to the ones the exported serving signature feeds it.
"""

from __future__ import annotations

import tensorflow as tf


def resize_for_model(images: tf.Tensor, size: int, crop_fraction: float = 1.0) -> tf.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, size, size, 3]``.

    Takes the central square of side ``crop_fraction * min(H, W)`` (the same fraction for every
    image, so cell scale stays consistent across inputs), resizes it bilinearly with
    antialiasing and rounds back to uint8, which is what the training cache stores.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    side = tf.cast(
        tf.math.round(tf.cast(tf.minimum(height, width), tf.float32) * crop_fraction), tf.int32
    )
    side = tf.maximum(side, 1)
    top = (height - side) // 2
    left = (width - side) // 2
    cropped = images[:, top : top + side, left : left + side, :]
    resized = tf.image.resize(
        tf.cast(cropped, tf.float32), (size, size), method="bilinear", antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.math.round(resized), 0.0, 255.0), tf.uint8)
