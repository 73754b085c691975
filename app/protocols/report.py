"""What every standard format carries besides the results: model identity, caller references.

The FHIR and HL7 v2 renderers are pure functions of a ``ClassifyResponse``, a
``ModelIdentity`` and the ``CallerReferences``; nothing here reads image bytes or file names,
so no format can carry them.

Codes the project defines (documented in README.md, "Integrating"): the systems live under
``CODE_BASE``, a placeholder on the reserved ``.invalid`` domain (RFC 6761), so they can
never be mistaken for, or resolve to, a real organisation's terminology server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.errors import InvalidReference
from app.registry import LoadedVersion
from app.schemas import ImageResult

CODE_BASE = "https://leukaemia-cell-service.invalid/fhir"
CELL_CLASS_SYSTEM = f"{CODE_BASE}/CodeSystem/cnmc-cell-class"
"""``all`` (ALL lymphoblast) and ``hem`` (normal B-lymphoid cell): the model's labels."""
OBSERVATION_SYSTEM = f"{CODE_BASE}/CodeSystem/cnmc-observation"
"""What each observation measures (``cell-class``, ``blast-probability``, ...)."""
MODEL_DIGEST_SYSTEM = f"{CODE_BASE}/NamingSystem/savedmodel-sha256"
"""Identifier system of a model: the sha256 of its ``saved_model.pb``."""
REQUEST_ID_SYSTEM = f"{CODE_BASE}/NamingSystem/request-id"
HL7_CODING_SYSTEM = "99CNMC"
"""HL7 v2 name of the same local code systems (table 0396: 99zzz is a local system)."""

REPORT_CODE = ("cnmc-cell-report", "C-NMC single white-cell classification report")
OBSERVATION_CODES: dict[str, str] = {
    "cell-count": "Cells classified",
    "blast-count": "Cells classified as ALL lymphoblast",
    "blast-fraction": "Blast fraction (all cells)",
    "ood-count": "Cells out of distribution",
    "blast-fraction-in-distribution": "Blast fraction (cells in distribution)",
    "cell-class": "White-cell class",
    "blast-probability": "ALL lymphoblast probability",
    "decision-threshold": "Decision threshold",
    "out-of-distribution": "Image out of the model's distribution",
    "image-index": "Position of the image in the request",
}
RESEARCH_USE_ONLY = "Research use only. Not a diagnostic device; not for clinical decisions."

# FHIR R4 reference grammar (http://hl7.org/fhir/R4/references.html#literal), limited to the
# resource types each element accepts here.
_REFERENCE = (
    r"(https?://([A-Za-z0-9\-.:%$]*/)+)?"
    r"(?P<type>{types})/(?P<id>[A-Za-z0-9\-.]{{1,64}})(/_history/[A-Za-z0-9\-.]{{1,64}})?"
)
MAX_REFERENCE_LENGTH = 512


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a result, as every format states it."""

    name: str
    version: int
    saved_model_sha256: str
    intended_use: str
    labels: tuple[str, ...]
    positive_label: str
    threshold: float
    label_descriptions: Mapping[str, str]

    @classmethod
    def of(cls, loaded: LoadedVersion) -> ModelIdentity:
        card = loaded.card
        return cls(
            name=loaded.name,
            version=loaded.version,
            saved_model_sha256=card.files.get("saved_model.pb", ""),
            intended_use=card.intended_use or RESEARCH_USE_ONLY,
            labels=tuple(card.labels),
            positive_label=card.positive_label,
            threshold=card.threshold,
            label_descriptions={
                label: card.label_descriptions.get(label, label) for label in card.labels
            },
        )

    @property
    def display(self) -> str:
        return f"{self.name} version {self.version} (SavedModel sha256 {self.saved_model_sha256})"


@dataclass(frozen=True)
class ReferenceHeader:
    header: str
    resource_types: tuple[str, ...]

    def parse(self, value: str) -> Reference:
        if len(value) > MAX_REFERENCE_LENGTH:
            raise InvalidReference(f"{self.header} is longer than {MAX_REFERENCE_LENGTH} chars.")
        pattern = _REFERENCE.format(types="|".join(self.resource_types))
        match = re.fullmatch(pattern, value.strip())
        if match is None:
            raise InvalidReference(
                f"{self.header} must be a FHIR reference to "
                f"{' or '.join(self.resource_types)} ('{self.resource_types[0]}/<id>' or an "
                "absolute URL ending in it)."
            )
        return Reference(value.strip(), match["type"], match["id"])


@dataclass(frozen=True)
class Reference:
    """A validated literal FHIR reference; ``id`` is what HL7 v2 segments carry."""

    reference: str
    resource_type: str
    id: str


SUBJECT = ReferenceHeader("X-FHIR-Subject", ("Patient",))
SPECIMEN = ReferenceHeader("X-FHIR-Specimen", ("Specimen",))
BASED_ON = ReferenceHeader("X-FHIR-Based-On", ("ServiceRequest",))


@dataclass(frozen=True)
class CallerReferences:
    """References the caller sends in headers, passed through unchanged (never looked up)."""

    subject: Reference | None = None
    specimen: Reference | None = None
    based_on: Reference | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> CallerReferences:
        def read(kind: ReferenceHeader) -> Reference | None:
            value = headers.get(kind.header)
            return kind.parse(value) if value else None

        return cls(subject=read(SUBJECT), specimen=read(SPECIMEN), based_on=read(BASED_ON))

    @staticmethod
    def check_lengths(headers: Mapping[str, str]) -> None:
        """What a JSON answer, which carries no reference, still checks: the schema's
        length bound (a reference is only parsed where it is copied into the answer)."""
        for kind in (SUBJECT, SPECIMEN, BASED_ON):
            if len(headers.get(kind.header, "")) > MAX_REFERENCE_LENGTH:
                raise InvalidReference(
                    f"{kind.header} is longer than {MAX_REFERENCE_LENGTH} chars."
                )


def reference_headers_openapi() -> list[dict[str, object]]:
    """OpenAPI parameters for the reference headers (used by FHIR and HL7 v2 answers)."""
    return [
        {
            "name": kind.header,
            "in": "header",
            "required": False,
            "description": f"FHIR reference to a {' or '.join(kind.resource_types)} "
            f"(e.g. '{kind.resource_types[0]}/123'), copied into the FHIR and HL7 v2 answers "
            "(not into JSON ones, which only check its length).",
            "schema": {
                "type": "string",
                "maxLength": MAX_REFERENCE_LENGTH,
            },
        }
        for kind in (SUBJECT, SPECIMEN, BASED_ON)
    ]


@dataclass(frozen=True)
class SampleStatistics:
    """Counts over one request's images, the same in every format (the JSON ``summary``'s)."""

    n_cells: int
    n_blasts: int
    n_out_of_distribution: int
    blast_fraction: float
    blast_fraction_in_distribution: float | None

    @classmethod
    def of(cls, results: Sequence[ImageResult], positive_label: str) -> SampleStatistics:
        in_distribution = [r for r in results if not r.out_of_distribution]
        n_blasts = sum(r.label == positive_label for r in results)
        return cls(
            n_cells=len(results),
            n_blasts=n_blasts,
            n_out_of_distribution=len(results) - len(in_distribution),
            blast_fraction=n_blasts / len(results) if results else 0.0,
            blast_fraction_in_distribution=(
                sum(r.label == positive_label for r in in_distribution) / len(in_distribution)
                if in_distribution
                else None
            ),
        )

    def conclusion(self, positive_label: str) -> str:
        text = (
            f"{self.n_blasts} of {self.n_cells} cells classified as {positive_label!r} "
            f"(blast fraction {self.blast_fraction:.1%})"
        )
        if self.n_out_of_distribution:
            text += (
                f"; {self.n_out_of_distribution} out of distribution (not validated), "
                "blast fraction among the others "
                + (
                    f"{self.blast_fraction_in_distribution:.1%}"
                    if self.blast_fraction_in_distribution is not None
                    else "undefined"
                )
            )
        return text + "."
