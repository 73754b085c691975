"""The naive baseline: how most FastAPI model services are written.

Deliberately NOT how the real service works. It exists only so the benchmark can measure
the usual way side by side with the shipped service, on the same model and machine:

- the model is wrapped as a Keras model (``keras.layers.TFSMLayer`` over the SavedModel's
  ``serving_default``) and called with ``model.predict`` once per request, as the paper's
  notebook did;
- that call runs inside an ``async def`` route, i.e. on the event loop, so requests are
  served strictly one at a time;
- decoding is the same as the service's: PIL, converted to RGB uint8.

Run: ``NAIVE_MODEL_DIR=model_store/<name>/<version> uvicorn --factory bench.naive_app:create_app``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request

from contract.imaging import decode_image


def _load_keras_model(model_dir: str) -> Any:
    import keras

    images = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
    outputs = keras.layers.TFSMLayer(model_dir, call_endpoint="serving_default")(images)
    return keras.Model(images, outputs["probabilities"])


def _decode(data: bytes) -> np.ndarray:
    """The service's decoder (contract.imaging): the baseline differs in serving, not in what
    it decodes."""
    return decode_image(data, 10**9, max_side=450).pixels


def create_app() -> FastAPI:
    model_dir = os.environ["NAIVE_MODEL_DIR"]
    model = _load_keras_model(model_dir)
    app = FastAPI(title="naive baseline (benchmark only)")

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("files")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "field 'files' missing")
            data = await upload.read()
        else:
            data = await request.body()
        try:
            pixels = _decode(data)
        except Exception as exc:  # the baseline only needs to reject garbage, not explain it
            raise HTTPException(415, "not a decodable image") from exc
        probabilities = model.predict(pixels[np.newaxis], verbose=0)[0]
        return {
            "p_all": float(probabilities[1]),
            "label": "all" if probabilities[1] >= 0.5 else "hem",
        }

    return app
