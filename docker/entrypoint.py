"""Container entrypoint: say which device TensorFlow will use, then run the service.

Runs in the container's main process (exec-form ENTRYPOINT, no shell in between), so the
service's own SIGTERM handling (uvicorn's graceful shutdown) gets `docker stop`'s signal.
TensorFlow is imported here once; the service reuses the loaded module.
"""

from __future__ import annotations

import logging
import runpy

logger = logging.getLogger("entrypoint")


def log_compute_device() -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    built_with_cuda = tf.test.is_built_with_cuda()
    if gpus:
        device = "GPU: " + ", ".join(gpu.name for gpu in gpus)
    elif built_with_cuda:
        device = "CPU (CUDA build, but no GPU visible: running on the CPU)"
    else:
        device = "CPU (CPU-only TensorFlow build)"
    logger.info("tensorflow %s; compute device: %s", tf.__version__, device)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log_compute_device()
    runpy.run_module("app", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
