"""Container entrypoint: log which device TensorFlow will use, then run ``python -m app``.

Runs as the container's main process (exec-form ENTRYPOINT, no shell in between), so
uvicorn's own SIGTERM handling gets `docker stop`'s signal: it stops accepting connections,
lets in-flight requests finish (at most LEUK_SHUTDOWN_GRACE_SECONDS), then exits with the
SIGTERM status (uvicorn re-raises the signal). TensorFlow is imported once, here; the service
reuses the loaded module. Listing physical devices does not start TensorFlow's runtime, so
the service can still set its thread pools afterwards.
"""

from __future__ import annotations

import runpy

from app.log import configure_logging, get_logger
from app.settings import Settings


def log_compute_device() -> None:
    import tensorflow as tf

    gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    built_with_cuda = tf.test.is_built_with_cuda()
    if gpus:
        device = "GPU"
    elif built_with_cuda:
        device = "CPU (CUDA build, but no GPU visible)"
    else:
        device = "CPU (CPU-only TensorFlow build)"
    get_logger("device").info(
        "compute device: %s",
        device,
        extra={"tensorflow": tf.__version__, "built_with_cuda": built_with_cuda, "gpus": gpus},
    )


def main() -> None:
    configure_logging(Settings().log_level)
    log_compute_device()
    runpy.run_module("app", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
