"""Open Inference Protocol (KServe v2) REST: what KServe, Triton, MLServer and Seldon clients speak.

The same registry, batcher, auth and metrics as the service's own API: models are found
with ``DataPlane.resolve`` (loaded on first use, as ``/v1/models/{name}/classify``) and run
through the batcher. Inputs (send exactly one):

- ``image_file``, ``BYTES`` ``[N]``: the encoded image files (BMP, PNG, JPEG, TIFF), decoded
  and checked as by ``/v1/classify``. In JSON each element is the file in base64; with the
  binary tensor data extension, the raw bytes (4-byte little-endian length, then the bytes).
- ``pixels``, ``UINT8`` ``[N, H, W, 3]``: decoded RGB pixels; the same out-of-distribution
  checks run on them.

Outputs: ``probabilities`` (``FP32`` ``[N, n_labels]``, in the order of the model's labels),
``label`` (``BYTES`` ``[N]``) and ``out_of_distribution`` (``BOOL`` ``[N]``), and for a version
whose card has an ``ood_check`` also ``ood_score`` (``FP32`` ``[N]``), in JSON or
binary (``binary_data`` per output, or ``binary_data_output`` for all). The response's
``parameters`` carry the model identity (SavedModel sha256) and its intended use.

Errors on these routes have the protocol's shape, ``{"error": "<message>"}``, with the status
the service's own error would have; readiness answers 400 when not ready, as the protocol
says ("4xx indicating false").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from numpy.typing import NDArray
from pydantic import BaseModel, Field, ValidationError

from app.api.deps import DataPlaneDep, RequestIdDep, SettingsDep
from app.api.image_routes import path_version
from app.audit.api import audit_draft, begin_audit
from app.dataplane import DataPlane
from app.errors import (
    ImageTooLarge,
    InvalidInferenceRequest,
    ModelNotFound,
    NotReady,
    ServiceError,
    TooManyFiles,
    VersionNotFound,
)
from app.keys import Role
from app.protocols.report import ModelIdentity
from app.registry import LoadedVersion
from app.schemas import ClassifyResponse
from app.security import require_role
from app.settings import Settings
from app.uploads import read_body

SERVER_NAME = "leukaemia-cell-service"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "tensorflow_savedmodel"
HEADER_LENGTH = "inference-header-content-length"
INPUT_FILE, INPUT_PIXELS = "image_file", "pixels"
OUTPUT_PROBABILITIES, OUTPUT_LABEL, OUTPUT_OOD = "probabilities", "label", "out_of_distribution"
OUTPUT_NAMES = (OUTPUT_PROBABILITIES, OUTPUT_LABEL, OUTPUT_OOD)
OUTPUT_OOD_SCORE = "ood_score"  # only for versions whose card has an ood_check

Parameters = dict[str, str | int | float | bool]


# --- schemas (the protocol's JSON) ---------------------------------------------------------
class OipError(BaseModel):
    error: str


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters = Field(description="Model identity and intended use.")


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    parameters: Parameters
    outputs: list[ResponseOutput]


# --- errors in the protocol's shape --------------------------------------------------------
class OipRoute(APIRoute):
    """Renders the service's errors as ``{"error": "..."}`` on this router only."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def oip_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return _error(request, exc)
            except RequestValidationError as exc:
                return _error(request, InvalidInferenceRequest(str(exc.errors()[:3])))

        return oip_handler


def _error(request: Request, exc: ServiceError) -> JSONResponse:
    request.state.error_code = exc.code
    if exc.reject_reason is not None:
        request.app.state.metrics.rejected.labels(exc.reject_reason).inc()
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OipError, "description": description}
    for status, description in (
        (400, "Malformed inference request"),
        (401, "API key missing (the service's own error shape: the check runs before routing)"),
        (404, "No such model or version"),
        (413, "Body, image or batch too large"),
        (422, "An image file cannot be decoded"),
        (503, "Not ready, model unavailable or overloaded"),
    )
}
oip = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OipRoute)


# --- health and metadata -------------------------------------------------------------------
@oip.get("/health/live", response_model=ServerLive, summary="OIP: server live")
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@oip.get(
    "/health/ready",
    response_model=ServerReady,
    summary="OIP: server ready (400 and ready=false when not)",
    responses={400: {"model": ServerReady}},
)
async def server_ready(dataplane: DataPlaneDep) -> JSONResponse:
    ready = dataplane.lifecycle.ready
    return JSONResponse(ServerReady(ready=ready).model_dump(), status_code=200 if ready else 400)


@oip.get("", response_model=ServerMetadata, summary="OIP: server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)


def _metadata(dataplane: DataPlane, name: str, version: int | None) -> ModelMetadata:
    info = dataplane.model_info(name, version)
    n_labels = len(info.labels)
    return ModelMetadata(
        name=info.name,
        versions=sorted(info.versions, key=int),
        platform=PLATFORM,
        inputs=[
            TensorMetadata(name=INPUT_FILE, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=INPUT_PIXELS, datatype="UINT8", shape=[-1, -1, -1, 3]),
        ],
        outputs=[
            TensorMetadata(name=OUTPUT_PROBABILITIES, datatype="FP32", shape=[-1, n_labels]),
            TensorMetadata(name=OUTPUT_LABEL, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=OUTPUT_OOD, datatype="BOOL", shape=[-1]),
            *(
                [TensorMetadata(name=OUTPUT_OOD_SCORE, datatype="FP32", shape=[-1])]
                if info.ood_check is not None
                else []
            ),
        ],
        parameters={
            "labels": ",".join(info.labels),
            "positive_label": info.positive_label,
            "threshold": info.threshold,
            "saved_model_sha256": info.files.get("saved_model.pb", ""),
            "intended_use": info.intended_use,
            **(
                {
                    "ood_threshold": info.ood_check["threshold"],
                    "ood_reason": info.ood_check["reason"],
                }
                if info.ood_check is not None
                else {}
            ),
        },
    )


_METADATA_ERRORS: dict[int | str, dict[str, Any]] = {
    k: v for k, v in _ERRORS.items() if k in (401, 404, 503)
}


@oip.get(
    "/models/{name}",
    response_model=ModelMetadata,
    summary="OIP: model metadata (served or newest version)",
    responses=_METADATA_ERRORS,
)
def model_metadata(name: str, dataplane: DataPlaneDep) -> ModelMetadata:
    return _metadata(dataplane, name, None)


@oip.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="OIP: model version metadata",
    responses=_METADATA_ERRORS,
)
def model_version_metadata(name: str, version: str, dataplane: DataPlaneDep) -> ModelMetadata:
    return _metadata(dataplane, name, path_version(version))


def _ready(dataplane: DataPlane, name: str, version: int | None) -> JSONResponse:
    """Loaded or not, without loading anything (a load happens on the first infer)."""
    if version is None:
        try:
            ready = dataplane.model_ready(name) is not None
        except NotReady:
            ready = False
    else:
        described = dataplane.registry.describe()
        if name not in described:
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        if str(version) not in described[name]["versions"]:
            raise VersionNotFound(f"Model {name!r} has no version {version}.")
        ready = dataplane.registry.loaded(name, version) is not None
    body = ModelReady(name=name, ready=ready).model_dump()
    return JSONResponse(body, status_code=200 if ready else 400)


@oip.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    summary="OIP: model ready (400 and ready=false when not loaded)",
    responses={400: {"model": ModelReady}, **_METADATA_ERRORS},
)
async def model_ready(name: str, dataplane: DataPlaneDep) -> JSONResponse:
    return _ready(dataplane, name, None)


@oip.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    summary="OIP: model version ready (400 and ready=false when not loaded)",
    responses={400: {"model": ModelReady}, **_METADATA_ERRORS},
)
async def model_version_ready(name: str, version: str, dataplane: DataPlaneDep) -> JSONResponse:
    return _ready(dataplane, name, path_version(version))


# --- infer ---------------------------------------------------------------------------------
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An OIP inference request: JSON, or (binary tensor data extension) "
        "a JSON header of `Inference-Header-Content-Length` bytes followed by the tensors' "
        "raw data. One input: `image_file` (BYTES [N], files; base64 strings in JSON) or "
        "`pixels` (UINT8 [N,H,W,3]).",
        "content": {
            "application/json": {"schema": InferenceRequest.model_json_schema()},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Binary tensor data extension: length of the JSON header.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
}
_INFER_DOC: dict[str, Any] = dict(
    # Audited like every classify route (app/audit), and needs a classify key.
    dependencies=[Depends(begin_audit), Depends(require_role(Role.classify))],
    response_model=InferenceResponse,
    responses={
        200: {
            "description": "JSON, or with binary outputs a JSON header of "
            "`Inference-Header-Content-Length` bytes followed by the outputs' raw data.",
            "content": {"application/octet-stream": {}},
        },
        **_ERRORS,
    },
    openapi_extra=_INFER_BODY,
)


@oip.post("/models/{name}/infer", summary="OIP: infer with a model", **_INFER_DOC)
async def infer(
    name: str,
    request: Request,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Response:
    return await _infer(request, dataplane, settings, request_id, name, None)


@oip.post(
    "/models/{name}/versions/{version}/infer",
    summary="OIP: infer with one model version",
    **_INFER_DOC,
)
async def infer_version(
    name: str,
    version: str,
    request: Request,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Response:
    return await _infer(request, dataplane, settings, request_id, name, path_version(version))


async def _infer(
    request: Request,
    dataplane: DataPlane,
    settings: Settings,
    request_id: str,
    name: str,
    version: int | None,
) -> Response:
    audit = audit_draft(request)
    loaded = audit.model = await dataplane.resolve(name, version)  # 404 before the body
    body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_seconds)
    inference, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
    tensor, data = _single_input(inference, binary)
    if tensor.name == INPUT_FILE:
        files = audit.payloads = _files(tensor, data, settings.max_files)
        request.state.n_images = len(files)
        result = await dataplane.classify(loaded, files, request_id, audit.note_decoded)
    else:
        pixels = _pixels(tensor, data, settings)
        # The audit trail's sha256 of an image sent as pixels is over its uint8 bytes.
        audit.payloads = [image.tobytes() for image in pixels]
        request.state.n_images = len(pixels)
        result = await dataplane.classify_pixels(loaded, pixels, request_id, audit.note_decoded)
    await audit.record_result(result)  # fail-closed: no record, no result
    return _response(inference, result, loaded, request_id)


def _split_body(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON request and the binary tensor data after it (binary tensor data extension)."""
    size = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidInferenceRequest(
                f"Inference-Header-Content-Length must be an integer <= the body's {len(body)}"
                " bytes."
            )
        size = int(header_length)
    try:
        return InferenceRequest.model_validate_json(body[:size]), body[size:]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise InvalidInferenceRequest(f"Not an inference request: {problems}") from None


def _single_input(inference: InferenceRequest, binary: bytes) -> tuple[RequestInput, bytes | None]:
    """The one input, with its binary data (None: its data is in the JSON)."""
    names = [tensor.name for tensor in inference.inputs]
    if len(names) != 1 or names[0] not in (INPUT_FILE, INPUT_PIXELS):
        raise InvalidInferenceRequest(
            f"Send exactly one input, '{INPUT_FILE}' (BYTES, image files) or '{INPUT_PIXELS}' "
            f"(UINT8 [N,H,W,3]); got {names[:4]}."
        )
    tensor = inference.inputs[0]
    expected = "BYTES" if tensor.name == INPUT_FILE else "UINT8"
    if tensor.datatype != expected:
        raise InvalidInferenceRequest(
            f"Input '{tensor.name}' has datatype {expected}, got {tensor.datatype[:16]!r}."
        )
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidInferenceRequest("Input shapes have no negative dimensions.")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidInferenceRequest("Binary data follows the header but no input has it.")
        if tensor.data is None:
            raise InvalidInferenceRequest(f"Input '{tensor.name}' has no data.")
        return tensor, None
    if not isinstance(size, int) or size != len(binary):
        raise InvalidInferenceRequest(
            f"binary_data_size ({size}) does not match the {len(binary)} bytes after the header."
        )
    return tensor, binary


def _flat(data: Any) -> list[Any]:
    """The protocol allows nested (row-major) or flat data lists."""
    if not isinstance(data, list):
        raise InvalidInferenceRequest("Tensor data must be a list.")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _count(tensor: RequestInput, max_images: int) -> int:
    n = tensor.shape[0] if tensor.shape else 0
    if n < 1:
        raise InvalidInferenceRequest(f"Input '{tensor.name}' holds no image.")
    if n > max_images:
        raise TooManyFiles(f"At most {max_images} images per request.")
    return n


def _files(tensor: RequestInput, binary: bytes | None, max_images: int) -> list[bytes]:
    if len(tensor.shape) != 1:
        raise InvalidInferenceRequest(f"'{INPUT_FILE}' has shape [N], got {tensor.shape}.")
    n = _count(tensor, max_images)
    files = _bytes_elements(binary) if binary is not None else _base64_elements(tensor.data)
    if len(files) != n:
        raise InvalidInferenceRequest(f"Shape says {n} elements, the data holds {len(files)}.")
    return files


def _bytes_elements(binary: bytes) -> list[bytes]:
    """BYTES in binary form: each element a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise InvalidInferenceRequest("Truncated BYTES element length.")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise InvalidInferenceRequest("A BYTES element runs past the end of the data.")
        elements.append(binary[offset : offset + length])
        offset += length
    return elements


def _base64_elements(data: Any) -> list[bytes]:
    elements = []
    for index, item in enumerate(_flat(data)):
        if not isinstance(item, str):
            raise InvalidInferenceRequest(f"'{INPUT_FILE}' element {index} is not a string.")
        try:
            elements.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInferenceRequest(
                f"'{INPUT_FILE}' element {index} is not base64 (in JSON, BYTES elements carry "
                "the file base64-encoded; or use the binary tensor data extension)."
            ) from None
    return elements


def _pixels(
    tensor: RequestInput, binary: bytes | None, settings: Settings
) -> list[NDArray[np.uint8]]:
    shape = tensor.shape
    if len(shape) != 4 or shape[3] != 3:
        raise InvalidInferenceRequest(f"'{INPUT_PIXELS}' has shape [N,H,W,3], got {shape}.")
    n = _count(tensor, settings.max_files)
    height, width = shape[1], shape[2]
    if height * width > settings.max_image_pixels:
        raise ImageTooLarge(
            f"The image has {width}x{height} pixels; the limit is {settings.max_image_pixels}."
        )
    if height == 0 or width == 0:
        raise InvalidInferenceRequest("The images have no pixels.")
    expected = math.prod(shape)
    if binary is not None:
        if len(binary) != expected:
            raise InvalidInferenceRequest(
                f"Shape {shape} needs {expected} bytes, got {len(binary)}."
            )
        array = np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    else:
        values = np.asarray(_flat(tensor.data))
        if values.size != expected:
            raise InvalidInferenceRequest(
                f"Shape {shape} needs {expected} values, got {values.size}."
            )
        if values.dtype.kind not in "iu" or (
            values.size and (values.min() < 0 or values.max() > 255)
        ):
            raise InvalidInferenceRequest(f"'{INPUT_PIXELS}' values are integers in 0..255.")
        array = values.astype(np.uint8).reshape(shape)
    return [np.ascontiguousarray(array[i]) for i in range(n)]


def _response(
    inference: InferenceRequest, result: ClassifyResponse, loaded: LoadedVersion, request_id: str
) -> Response:
    model = ModelIdentity.of(loaded)
    tensors = _output_tensors(result, model, scored=loaded.card.ood_check is not None)
    requested = inference.outputs or [RequestOutput(name=name) for name in tensors]
    unknown = [o.name for o in requested if o.name not in tensors]
    if unknown:
        raise InvalidInferenceRequest(f"Unknown outputs {unknown[:4]}; known: {list(tensors)}.")
    all_binary = bool((inference.parameters or {}).get("binary_data_output", False))
    outputs, blobs = [], []
    for out in requested:
        datatype, shape, values = tensors[out.name]
        if bool((out.parameters or {}).get("binary_data", all_binary)):
            blob = _binary(datatype, values)
            blobs.append(blob)
            outputs.append(
                ResponseOutput(
                    name=out.name, datatype=datatype, shape=shape,
                    parameters={"binary_data_size": len(blob)},
                )
            )  # fmt: skip
        else:
            data = values.ravel().tolist() if isinstance(values, np.ndarray) else values
            outputs.append(ResponseOutput(name=out.name, datatype=datatype, shape=shape, data=data))
    body = InferenceResponse(
        model_name=loaded.name,
        model_version=str(loaded.version),
        id=inference.id if inference.id is not None else request_id,
        parameters={
            "saved_model_sha256": model.saved_model_sha256,
            "intended_use": model.intended_use,
            "labels": ",".join(model.labels),
            "positive_label": model.positive_label,
            "threshold": model.threshold,
            "request_id": request_id,
        },
        outputs=outputs,
    )
    header = json.dumps(body.model_dump(exclude_none=True), separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


Tensor = tuple[str, list[int], "NDArray[Any] | list[str]"]


def _output_tensors(
    result: ClassifyResponse, model: ModelIdentity, scored: bool
) -> dict[str, Tensor]:
    """Every output this version has, in the order a request without ``outputs`` gets them."""
    rows = result.results
    probabilities = np.array(
        [[r.probabilities[label] for label in model.labels] for r in rows], dtype=np.float32
    ).reshape(len(rows), len(model.labels))
    ood = np.array([r.out_of_distribution for r in rows], dtype=np.bool_)
    tensors: dict[str, Tensor] = {
        OUTPUT_PROBABILITIES: ("FP32", list(probabilities.shape), probabilities),
        OUTPUT_LABEL: ("BYTES", [len(rows)], [r.label for r in rows]),
        OUTPUT_OOD: ("BOOL", [len(rows)], ood),
    }
    if scored:
        scores = np.array(
            [r.ood_score if r.ood_score is not None else np.nan for r in rows], dtype=np.float32
        )
        tensors[OUTPUT_OOD_SCORE] = ("FP32", [len(rows)], scores)
    return tensors


def _binary(datatype: str, values: NDArray[Any] | list[str]) -> bytes:
    if isinstance(values, list):  # BYTES: length-prefixed elements
        encoded = [value.encode("utf-8") for value in values]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    if datatype == "FP32":
        return values.astype("<f4").tobytes()
    return values.astype(np.uint8).tobytes()  # BOOL: one byte per element
