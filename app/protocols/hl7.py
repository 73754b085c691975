"""A classify answer as an HL7 v2.5.1 ``ORU^R01`` message (ER7, segments ended by ``\\r``).

The same content as the FHIR report, in the segments a LIS expects:

    MSH  sender LEUK-CELL-SERVICE, ORU^R01^ORU_R01, processing P, version 2.5.1, UTF-8
    PID  only when the caller sent X-FHIR-Subject: PID-3 is its id, PID-5 is null ("")
         (the service never knows names)
    OBR  placer order = the X-FHIR-Based-On id, filler order = the request id, service
         cnmc-cell-report^...^99CNMC, result status P (preliminary)
    NTE  model identity (name, version, SavedModel sha256) and the intended use
    OBX  per sample: cell-count, blast-count, blast-fraction (%), ood-count and, when any
         image is in distribution, blast-fraction-in-distribution (NM)
    OBX  per image, sub-ID = its position in the request: cell-class (CWE, abnormal flag
         A or N), blast-probability (NM), out-of-distribution (CWE Y/N, HL70136), followed
         by an NTE saying why when the image is out of distribution
    SPM  only when the caller sent X-FHIR-Specimen: SPM-2 is its id

Every OBX names the model in OBX-18 (equipment instance: name-vVERSION^^sha256:DIGEST^L)
and has status P. The message is written here rather than with hl7apy's element tree:
building a 64-image message with hl7apy takes about a second of pure Python (it parses
every value into its own element), which would stall every other request. hl7apy parses
and validates the messages at STRICT level in the tests instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from app.protocols.report import (
    HL7_CODING_SYSTEM,
    OBSERVATION_CODES,
    REPORT_CODE,
    CallerReferences,
    ModelIdentity,
    SampleStatistics,
)
from app.schemas import ClassifyResponse, ImageResult

MEDIA_TYPE = "x-application/hl7-v2+er7"
ACCEPTED_MEDIA_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7")
SENDING_APPLICATION = "LEUK-CELL-SERVICE"
SEGMENT_END = "\r"

# ER7 escape sequences (HL7 v2.5.1 section 2.7.4); the escape character itself goes first.
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(text: str) -> str:
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return " ".join(text.split())  # no control characters: \r would end the segment


def render_oru(
    response: ClassifyResponse,
    model: ModelIdentity,
    references: CallerReferences,
    issued: datetime,
) -> str:
    """The ORU^R01 message for one classify answer: no image bytes, no file names."""
    when = issued.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    stats = SampleStatistics.of(response.results, model.positive_label)
    equipment = f"{escape(model.name)}-v{model.version}^^sha256:{model.saved_model_sha256}^L"
    segments = [
        # MSH-10 (control ID) is at most 20 characters; the request ID goes into OBR-3.
        _segment("MSH", "^~\\&", SENDING_APPLICATION, "", "", "", when, "",
                 "ORU^R01^ORU_R01", uuid.uuid4().hex[:20], "P", "2.5.1", "", "", "", "", "",
                 "UNICODE UTF-8"),
    ]  # fmt: skip
    if references.subject is not None:
        segments.append(_segment("PID", "1", "", escape(references.subject.id), "", '""'))
    placer = escape(references.based_on.id) if references.based_on is not None else ""
    segments.append(
        _segment("OBR", "1", placer, escape(response.request_id), _coded(*REPORT_CODE),
                 "", "", when, *[""] * 14, when, "", "HM", "P")
    )  # fmt: skip
    segments.append(_segment("NTE", "1", "L", escape(_identity_note(model))))
    observations = _observations(response.results, stats, model, when, equipment)
    segments.extend(observations)
    if references.specimen is not None:
        # SPM-4 (specimen type) is required; the service is not told it, so only text.
        segments.append(
            _segment("SPM", "1", f"{escape(references.specimen.id)}", "",
                     "^^^^^^^^specimen type not sent to the classifier")
        )  # fmt: skip
    return SEGMENT_END.join(segments) + SEGMENT_END


def _segment(name: str, *fields: str) -> str:
    if name == "MSH":  # MSH-1 is the field separator itself
        return "MSH|" + "|".join(fields)
    return "|".join((name, *fields)).rstrip("|")


def _coded(code: str, text: str) -> str:
    return f"{code}^{escape(text)}^{HL7_CODING_SYSTEM}"


def _identity_note(model: ModelIdentity) -> str:
    return f"Model: {model.display}. Intended use: {model.intended_use}"


class _ObxWriter:
    """OBX segments numbered 1, 2, ... (OBX-1), each with status P, time and model."""

    def __init__(self, when: str, equipment: str) -> None:
        self.when, self.equipment, self.set_id = when, equipment, 0

    def __call__(self, value_type: str, code: str, sub_id: str, value: str, units: str = "",
                 flag: str = "") -> str:  # fmt: skip
        self.set_id += 1
        return _segment("OBX", str(self.set_id), value_type,
                        _coded(code, OBSERVATION_CODES[code]), sub_id, value, units, "", flag,
                        "", "", "P", "", "", self.when, "", "", "", self.equipment)  # fmt: skip


def _observations(
    results: list[ImageResult],
    stats: SampleStatistics,
    model: ModelIdentity,
    when: str,
    equipment: str,
) -> list[str]:
    obx = _ObxWriter(when, equipment)
    cells, percent = "{cells}^cells^UCUM", "%^percent^UCUM"
    segments = [
        obx("NM", "cell-count", "", str(stats.n_cells), cells),
        obx("NM", "blast-count", "", str(stats.n_blasts), cells),
        obx("NM", "blast-fraction", "", _number(stats.blast_fraction * 100), percent),
        obx("NM", "ood-count", "", str(stats.n_out_of_distribution), cells),
    ]
    if stats.blast_fraction_in_distribution is not None:
        fraction = _number(stats.blast_fraction_in_distribution * 100)
        segments.append(obx("NM", "blast-fraction-in-distribution", "", fraction, percent))
    for result in results:
        segments.extend(_cell(result, model, obx))
    return segments


def _cell(result: ImageResult, model: ModelIdentity, obx: _ObxWriter) -> Iterator[str]:
    sub_id = str(result.index)
    blast = result.label == model.positive_label
    label = f"{escape(result.label)}^{escape(model.label_descriptions.get(result.label, ''))}"
    yield obx(
        "CWE", "cell-class", sub_id, f"{label}^{HL7_CODING_SYSTEM}", "", "A" if blast else "N"
    )
    yield obx("NM", "blast-probability", sub_id, _number(result.blast_probability), "1^^UCUM")
    ood = "Y^Yes^HL70136" if result.out_of_distribution else "N^No^HL70136"
    yield obx("CWE", "out-of-distribution", sub_id, ood)
    if result.out_of_distribution:
        reasons = ", ".join(result.input_check.reasons)
        note = f"Out of distribution ({reasons}): not validated for this image; do not use."
        yield _segment("NTE", "1", "L", escape(note))


def _number(value: float) -> str:
    """NM: plain decimal, no exponent (HL7 v2 has none), enough digits for a probability."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"
