"""The model card (``model_card.json`` in every version folder), as one typed model.

``training.export.build_card`` writes it; training, the tests and the benchmark read it
through :class:`ModelCard`, so the keys and their meaning are declared once, here (the
service's ``app.registry.ModelCard`` is still a looser reader of its own). Only pydantic and
the standard library are imported, so a card can be read without loading TensorFlow.

Every group forbids unknown keys. A card has one writer (``build_card``), so a key this
model does not declare is a typo or a writer that drifted from the contract, and a version
carrying it should fail loudly when read rather than have the key silently ignored. Adding a
key means adding it here, with a default when committed cards lack it (versions are
immutable: old cards must keep validating). The metric tables, whose shape differs between
the validation, test and cross-validation summaries, stay plain JSON objects; the service
only passes them through.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CARD_FILE = "model_card.json"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardInput(_Group):
    """The serving signature's input: decoded uint8 RGB pixels of any size."""

    signature: str = "serving_default"
    input_name: str = "images"
    dtype: Literal["uint8"] = "uint8"
    shape: list[int | None] = Field(default_factory=lambda: [None, None, None, 3])
    color: Literal["RGB"] = "RGB"
    model_input_size: tuple[int, int] = Field(
        description="height, width the signature resizes to before the network"
    )
    crop: str = Field(description="crop applied inside the signature, in words")
    resize: str
    scaling: str
    expected_image: str


class InputChecks(_Group):
    """Out-of-distribution rule applied to every decoded image before it reaches the model.

    The defaults were calibrated on all 2,662 C-NMC images and 80 out-of-distribution images
    (smear fields, unsegmented lymphocytes) by ``scripts/calibrate_ood.py``: every C-NMC image
    has >= 96.1 % near-black border and 6.8-25 % foreground; every OOD image has <= 0.6 %
    near-black border. Cards written before this group existed get these defaults.
    """

    dark_level: int = Field(
        default=10,
        ge=0,
        le=255,
        description="a pixel is background when all its channels are <= this",
    )
    border_width: float = Field(
        default=0.10, gt=0.0, le=0.5, description="outer band, as a fraction of the shorter side"
    )
    min_border_dark: float = Field(
        default=0.50, ge=0.0, le=1.0, description="minimum share of background pixels in the band"
    )
    min_foreground: float = Field(default=0.02, ge=0.0, le=1.0)
    max_foreground: float = Field(default=0.50, ge=0.0, le=1.0)
    expected_size: tuple[int, int] = Field(
        default=(450, 450), description="width, height of the images the model was trained on"
    )

    @model_validator(mode="after")
    def _foreground_range(self) -> InputChecks:
        if self.min_foreground >= self.max_foreground:
            raise ValueError("min_foreground must be below max_foreground")
        return self


class CardOutput(_Group):
    output_name: str = "probabilities"
    dtype: Literal["float32"] = "float32"
    shape: list[int | None] = Field(default_factory=lambda: [None, 2])


class CardMetrics(_Group):
    """Metric tables; ``test`` and ``validation`` say in their ``what`` key what they measure."""

    validation: dict[str, Any] = Field(default_factory=dict)
    test: dict[str, Any] = Field(default_factory=dict)
    cross_validation: dict[str, Any] | None = None


class CardData(_Group):
    dataset: str
    citation: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    duplicates_dropped: int = Field(ge=0)
    splits: dict[str, Any]


class CardTraining(_Group):
    config: dict[str, Any] = Field(
        description="the full training config as the run saved it (training.train.TrainConfig)"
    )
    seed: int
    epochs_run: int = Field(ge=0)
    selected_epoch: int = Field(ge=0)
    seconds: float = Field(ge=0.0)
    seconds_per_epoch: float = Field(ge=0.0)
    images_per_second: float = Field(ge=0.0)
    command: str


# How the ``explain`` signature computes its map (training/explain.py says why each exists).
ExplainMethod = Literal["grad-cam", "hires-cam", "layer-cam", "integrated-gradients", "occlusion"]


class CardExplain(_Group):
    """The optional ``explain`` signature: class-activation maps from the same weights.

    It takes the same input as ``serving_default`` and returns ``probabilities`` and
    ``class_activation`` ([N, H, W] float32 in the input image's pixel frame, signed: positive
    values support the positive label, negative ones the other; the map for the predicted
    class is the positive part of +map or -map). A version written to add it to an older one
    names that version and its digest (sha256 over the older card's sorted
    ``path<TAB>sha256<LF>`` file lines) and the largest probability difference measured
    between the two ``serving_default`` signatures.
    """

    signature: str = "explain"
    output_name: str = "class_activation"
    method: ExplainMethod = "grad-cam"
    extends_version: int | None = Field(default=None, ge=1)
    extends_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    max_probability_difference: float | None = Field(default=None, ge=0.0)


class CardOODCheck(_Group):
    """A learned out-of-distribution score the ``serving_default`` signature returns.

    The signature (and the ``explain`` one, when the version has it) returns the float32 [N]
    output ``output_name`` next to the probabilities; higher means less like the cells the
    model was trained on. An image whose score is above ``threshold`` is flagged out of
    distribution with ``reason``, as the input checks flag images (``input_check.reasons``).
    ``method`` says in words how the score is computed and calibrated; ``measured`` holds the
    flag rates the calibration measured (plain JSON, passed through).
    """

    output_name: str = Field(default="ood_score", min_length=1)
    threshold: float = Field(allow_inf_nan=False)
    reason: str = Field(
        default="unfamiliar_cell",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="reason code listed in input_check.reasons when the score is above threshold",
    )
    method: str
    measured: dict[str, Any] = Field(default_factory=dict)


class CardCalibration(_Group):
    """How the probabilities were calibrated. The calibration is part of the exported graph
    (``applied: in_graph``): the service reports it and never applies it again."""

    method: str = Field(description="e.g. 'temperature' or 'isotonic'")
    parameters: dict[str, float]
    applied: Literal["in_graph"]
    ece_before: float | None = Field(default=None, ge=0.0, le=1.0)
    ece_after: float | None = Field(default=None, ge=0.0, le=1.0)
    what: str = Field(description="what the calibration was fitted and measured on, in words")


class CardFramework(_Group):
    tensorflow: str
    keras: str
    python: str


class ModelCard(_Group):
    """One model version: what it is, how to call it, how it was made and how well it does."""

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    created_at: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    architecture: str
    description: str
    intended_use: str
    labels: list[str] = Field(min_length=2)
    label_descriptions: dict[str, str]
    positive_label: str
    threshold: float = Field(ge=0.0, le=1.0)
    input: CardInput
    input_checks: InputChecks = Field(default_factory=lambda: InputChecks())
    output: CardOutput
    metrics: CardMetrics
    data: CardData
    training: CardTraining
    framework: CardFramework
    files: dict[str, str] = Field(min_length=1, description="sha256 of every SavedModel file")
    explain: CardExplain | None = None
    ood_check: CardOODCheck | None = None
    calibration: CardCalibration | None = None

    @model_validator(mode="after")
    def _labels_agree(self) -> ModelCard:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        if self.positive_label not in self.labels:
            raise ValueError(f"positive_label {self.positive_label!r} is not in {self.labels}")
        unknown = set(self.label_descriptions) - set(self.labels)
        if unknown:
            raise ValueError(f"label_descriptions for labels the model lacks: {sorted(unknown)}")
        if self.ood_check is not None and self.ood_check.output_name == self.output.output_name:
            raise ValueError("ood_check.output_name must differ from output.output_name")
        return self

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    @property
    def digest(self) -> str:
        """sha256 over the sorted ``path<TAB>sha256<LF>`` lines of ``files``: one string that
        names the version's exact SavedModel files."""
        lines = "".join(f"{path}\t{sha}\n" for path, sha in sorted(self.files.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def to_json(self) -> str:
        """The file's text: two-space indent, declaration order, trailing newline."""
        return self.model_dump_json(indent=2) + "\n"
