"""Response bodies (the stable JSON contract, documented in OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.audit.schemas import AuditHealth


class InputCheckOut(BaseModel):
    out_of_distribution: bool = Field(
        description="True: the image does not look like a C-NMC segmented single cell on a "
        "black background, or its size is not near 450x450; its prediction is outside what "
        "the model was validated on."
    )
    reasons: list[str] = Field(
        description="Why it was flagged (empty when not flagged): the image checks' codes, "
        "and the card's ood_check reason (e.g. 'unfamiliar_cell') when the model's "
        "out-of-distribution score is above its threshold."
    )
    border_dark_fraction: float = Field(description="Share of near-black pixels in the border.")
    foreground_fraction: float = Field(description="Share of non-black pixels in the image.")


class ImageResult(BaseModel):
    index: int = Field(description="Position of the image in the request (0-based).")
    label: str = Field(
        description="Predicted label: the positive label when its probability >= threshold."
    )
    label_description: str
    probabilities: dict[str, float] = Field(description="Probability of each label.")
    blast_probability: float = Field(description="Probability of the positive label ('all').")
    threshold: float
    model: str
    version: int
    out_of_distribution: bool
    ood_score: float | None = Field(
        default=None,
        description="The model's learned out-of-distribution score (higher: less like the "
        "cells it was trained on); above the card's ood_check threshold the image is flagged "
        "with the card's reason. Null for versions without an ood_check.",
    )
    input_check: InputCheckOut
    warnings: list[str]


class Summary(BaseModel):
    n_images: int
    counts: dict[str, int] = Field(description="Images per predicted label (all images).")
    blast_fraction: float = Field(description="Share of images predicted as the positive label.")
    n_out_of_distribution: int
    blast_fraction_in_distribution: float | None = Field(
        description="Blast share among images not flagged out of distribution (None: none)."
    )
    blast_fraction_ci95: tuple[float, float] | None = Field(
        default=None,
        description="Wilson 95% interval of the blast share among in-distribution images.",
    )


_RESULT_EXAMPLE: dict[str, Any] = {
    "index": 0,
    "label": "all",
    "label_description": "ALL lymphoblast (leukaemic)",
    "probabilities": {"hem": 0.1034, "all": 0.8966},
    "blast_probability": 0.8966,
    "threshold": 0.5,
    "model": "cnmc-improved-cnn",
    "version": 1,
    "out_of_distribution": False,
    "ood_score": None,
    "input_check": {
        "out_of_distribution": False,
        "reasons": [],
        "border_dark_fraction": 1.0,
        "foreground_fraction": 0.1776,
    },
    "warnings": [],
}


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "lab-42",
                    "model": "cnmc-improved-cnn",
                    "version": 1,
                    "results": [_RESULT_EXAMPLE],
                    "summary": None,
                }
            ]
        }
    )

    request_id: str
    model: str
    version: int
    results: list[ImageResult]
    summary: Summary | None = Field(None, description="Present when more than one image was sent.")


class Live(BaseModel):
    status: Literal["live"] = "live"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    version: int


class HealthSummary(BaseModel):
    status: Literal["ready", "not_ready"]
    state: Literal["starting", "ready", "degraded", "failed"] = Field(
        description="starting: no load attempt finished yet; ready: serving, nothing to "
        "report; degraded: serving, but the reason names something an operator must fix; "
        "failed: the default model cannot be served (retried at every store poll)."
    )
    ready: bool = Field(description="True in the ready and degraded states.")
    reason: str | None
    default_model: str | None
    default_version: int | None
    uptime_seconds: float
    queue_depth: int
    models: dict[str, Any]
    audit: AuditHealth | None = Field(
        default=None,
        description="The audit store's state; failing under fail_closed makes this 503.",
    )


class ModelInfo(BaseModel):
    name: str
    versions: dict[str, Any] = Field(description="Every version on disk with its state.")
    served_version: int | None = Field(description="Version served when none is requested.")
    state: str
    labels: list[str]
    label_descriptions: dict[str, str]
    positive_label: str
    threshold: float
    input: dict[str, Any]
    output: dict[str, Any]
    metrics: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    framework: dict[str, Any]
    files: dict[str, str]
    intended_use: str
    description: str
    architecture: str | None
    created_at: str | None
    load_seconds: float | None
    loaded_at: str | None
    batching: str | None = Field(
        description="'stacked': images that queue together run as one call (a result stays "
        "within 1e-5 of the single-image result); 'per_image': every image runs alone "
        "(LEUK_EXACT_BATCHING=true; bit-identical to a single-image call); null: not loaded."
    )
    input_checks: str
    digest: str | None = Field(
        default=None, description="sha256 over the version's file hashes (ModelCard.digest)."
    )
    explain: dict[str, Any] | None = Field(
        default=None, description="The card's 'explain' signature, null when it has none."
    )
    ood_check: dict[str, Any] | None = Field(
        default=None,
        description="The card's learned out-of-distribution check (output, threshold, reason, "
        "method, measured flag rates); null when the version has none.",
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="How the probabilities were calibrated (applied inside the model); null "
        "when the card does not say.",
    )


class ModelList(BaseModel):
    default_model: str | None
    models: dict[str, Any]


class Heatmap(BaseModel):
    method: str = Field(
        description="How the map was computed, from the version's card: 'integrated-gradients', "
        "'grad-cam', 'hires-cam', 'layer-cam' or 'occlusion' (see training/explain.py)."
    )
    target_label: str = Field(description="The label the map explains: the predicted one.")
    png_base64: str = Field(description="PNG: the image with the map blended over it.")
    grid: list[list[float]] = Field(
        description="The map averaged to grid_size x grid_size cells over the whole image, "
        "scaled so its maximum is 1 (all zeros: no spatial evidence)."
    )
    grid_size: int
    heat_on_cell: float | None = Field(
        description="Share of the map's mass on non-black (cell) pixels; null with no mass."
    )
    spatial_evidence: float = Field(
        description="Mass of the map for the predicted label over the map's total absolute "
        "mass: near 0 when the convolutional features argue for the other label and the "
        "decision comes from whole-cell descriptors (size, colour)."
    )


class ExplainedResult(ImageResult):
    heatmap: Heatmap


class ExplainResponse(BaseModel):
    request_id: str
    model: str
    version: int
    digest: str
    results: list[ExplainedResult]
