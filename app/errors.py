"""One error hierarchy, one renderer: every failure is ``{"error": {code, detail, request_id}}``."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.context import current_request_id


class ServiceError(Exception):
    """Base of every error the service reports; subclasses fix status and code."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_detail: ClassVar[str] = "Internal server error."
    # Label for the rejected-inputs metric; None: not an input rejection.
    reject_reason: ClassVar[str | None] = None

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or self.default_detail
        self.headers = headers
        super().__init__(self.detail)


# --- 4xx: the caller's input ---------------------------------------------------------------
class EmptyBody(ServiceError):
    status_code, code, default_detail = 400, "empty_body", "The request body is empty."
    reject_reason = "empty_body"


class UnsupportedMediaType(ServiceError):
    status_code, code = 415, "unsupported_media_type"
    default_detail = "Send multipart/form-data or a raw image body (image/png, image/bmp, ...)."
    reject_reason = "unsupported_media_type"


class InvalidImage(ServiceError):
    status_code, code = 422, "invalid_image"
    default_detail = "The bytes are not a BMP, PNG, JPEG or TIFF image."
    reject_reason = "invalid_image"


class TruncatedImage(ServiceError):
    status_code, code = 422, "truncated_image"
    default_detail = "The image file is truncated or corrupt."
    reject_reason = "truncated_image"


class UnsupportedImageMode(ServiceError):
    status_code, code = 422, "unsupported_image_mode"
    default_detail = "The image's pixel format cannot be converted to RGB."
    reject_reason = "unsupported_image_mode"


class ImageTooLarge(ServiceError):
    status_code, code = 413, "image_too_large"
    default_detail = "The image has more pixels than allowed (decompression-bomb guard)."
    reject_reason = "image_too_large"


class RequestTooLargeDecoded(ServiceError):
    status_code, code = 413, "request_too_large_decoded"
    default_detail = "The request's images together have more pixels than allowed."
    reject_reason = "request_too_large_decoded"


class PayloadTooLarge(ServiceError):
    status_code, code = 413, "payload_too_large"
    default_detail = "The request body is larger than allowed."
    reject_reason = "payload_too_large"


class TooManyFiles(ServiceError):
    status_code, code = 413, "too_many_files"
    default_detail = "Too many images in one request."
    reject_reason = "too_many_files"


class InvalidMultipart(ServiceError):
    status_code, code = 400, "invalid_multipart"
    default_detail = "The multipart body could not be parsed."
    reject_reason = "invalid_multipart"


class MissingImages(ServiceError):
    status_code, code = 422, "missing_images"
    default_detail = "No image found: send files in the multipart field 'files' (or 'file')."
    reject_reason = "missing_images"


class UnexpectedField(ServiceError):
    status_code, code = 422, "unexpected_field"
    default_detail = "Unexpected multipart field: send images in the field 'files' (or 'file')."
    reject_reason = "unexpected_field"


class ModelNotFound(ServiceError):
    status_code, code, default_detail = 404, "model_not_found", "No such model in the store."
    reject_reason = "model_not_found"


class VersionNotFound(ServiceError):
    status_code, code, default_detail = 404, "version_not_found", "No such model version."
    reject_reason = "version_not_found"


class InvalidReference(ServiceError):
    status_code, code = 422, "invalid_reference"
    default_detail = "A caller reference header is not a valid FHIR reference."
    reject_reason = "invalid_reference"


class InvalidInferenceRequest(ServiceError):
    status_code, code = 400, "invalid_inference_request"
    default_detail = "The Open Inference Protocol request is malformed."
    reject_reason = "invalid_inference_request"


class ExplainUnsupported(ServiceError):
    status_code, code = 409, "explain_unsupported"
    default_detail = (
        "This model version has no 'explain' signature; use a version whose card lists one."
    )
    reject_reason = "explain_unsupported"


class Unauthorized(ServiceError):
    status_code, code = 401, "unauthorized"
    default_detail = "A valid API key is required (X-API-Key or Authorization: Bearer)."


class Forbidden(ServiceError):
    status_code, code = 403, "forbidden"
    default_detail = "This API key's role does not allow this endpoint."


class ValidationFailed(ServiceError):
    status_code, code, default_detail = 422, "validation_error", "The request is invalid."
    reject_reason = "validation_error"


class NotFound(ServiceError):
    status_code, code, default_detail = 404, "not_found", "No such endpoint."


class MethodNotAllowed(ServiceError):
    status_code, code, default_detail = 405, "method_not_allowed", "Method not allowed here."


class BodyTimeout(ServiceError):
    status_code, code = 408, "body_timeout"
    default_detail = "The request body stopped arriving (LEUK_BODY_TIMEOUT_SECONDS)."
    reject_reason = "body_timeout"


class ClientClosed(ServiceError):
    """The client closed the connection before the response; logged, never seen by anyone.

    499 is nginx's convention for this; it keeps such requests apart from answered ones."""

    status_code, code = 499, "client_closed"
    default_detail = "The client closed the connection before the response was ready."


class BadHttpRequest(ServiceError):
    """Sent by the HTTP server itself (app/server.py) before the app sees the request."""

    status_code, code = 400, "bad_http_request"
    default_detail = "Invalid HTTP request received."


# --- 5xx: the service's state --------------------------------------------------------------
class ModelUnavailable(ServiceError):
    status_code, code = 503, "model_unavailable"
    default_detail = "The model version could not be loaded."


class NotReady(ServiceError):
    status_code, code, default_detail = 503, "not_ready", "The service is not ready yet."


class Overloaded(ServiceError):
    status_code, code = 503, "overloaded"
    default_detail = "Too many images are waiting for inference; retry later."


class ExplainBusy(ServiceError):
    """Explanations run in their own small pool (LEUK_EXPLAIN_CONCURRENCY), never in the
    classification batcher; when it is full the request is refused, not queued."""

    status_code, code = 503, "explain_busy"
    default_detail = "All explanation slots are busy; retry in a moment."


class TooManyConnections(ServiceError):
    """Sent by the HTTP server itself (app/server.py) at LEUK_MAX_CONCURRENCY."""

    status_code, code = 503, "too_many_connections"
    default_detail = "The server is at its connection limit; retry later."


class ShuttingDown(ServiceError):
    status_code, code = 503, "shutting_down"
    default_detail = "The service is shutting down; retry on another instance or later."


class DecodeMemoryBusy(ServiceError):
    status_code, code = 503, "decode_memory_busy"
    default_detail = "Other requests' images fill the decoding memory budget; retry shortly."


class AuditUnavailable(ServiceError):
    status_code, code = 503, "audit_unavailable"
    default_detail = (
        "The audit trail could not record this request, so no result is returned; retry later."
    )


class ErrorBody(BaseModel):
    code: str
    detail: str
    request_id: str | None


class ErrorResponse(BaseModel):
    """Shape of every non-2xx response."""

    error: ErrorBody


def error_response(error: ServiceError) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(code=error.code, detail=error.detail, request_id=current_request_id())
    )
    return JSONResponse(body.model_dump(), status_code=error.status_code, headers=error.headers)


def _http_exception_to_error(exc: StarletteHTTPException) -> ServiceError:
    if exc.status_code == 404:
        return NotFound()
    if exc.status_code == 405:
        return MethodNotAllowed(headers=dict(exc.headers or {}))
    generic = ServiceError(str(exc.detail))
    generic.status_code = exc.status_code  # type: ignore[misc]
    generic.code = "http_error"  # type: ignore[misc]
    return generic


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or ValidationFailed.default_detail


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type to the one renderer."""

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        request.state.error_code = exc.code
        if exc.reject_reason is not None:
            request.app.state.metrics.rejected.labels(exc.reject_reason).inc()
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _http_exception_to_error(exc)
        request.state.error_code = error.code
        return error_response(error)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        request.state.error_code = ValidationFailed.code
        request.app.state.metrics.rejected.labels(ValidationFailed.reject_reason).inc()
        return error_response(ValidationFailed(_validation_detail(exc)))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def openapi_errors(*errors: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entry for a route: each status with the codes it can carry."""
    by_status: dict[int, list[str]] = {}
    for err in errors:
        by_status.setdefault(err.status_code, []).append(err.code)
    return {
        status: {"model": ErrorResponse, "description": "Error codes: " + ", ".join(codes)}
        for status, codes in sorted(by_status.items())
    }
