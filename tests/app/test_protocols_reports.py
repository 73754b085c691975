"""FHIR R4 and HL7 v2 answers to /v1/classify (Accept negotiation), through the real app."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from app.protocols.fhir import bundle_json
from app.protocols.hl7 import render_oru
from app.protocols.negotiation import ReportFormat, negotiate
from app.protocols.report import (
    CELL_CLASS_SYSTEM,
    MODEL_DIGEST_SYSTEM,
    CallerReferences,
    ModelIdentity,
)
from app.schemas import ClassifyResponse, ImageResult, InputCheckOut
from tests.app.conftest import CNMC_PNGS, OOD_JPEGS
from tests.app.test_api import assert_error

pytestmark = pytest.mark.anyio

# Upload names that look like patient identifiers: no answer may carry them.
NAMES = ["PAT-4711_cell-a.png", "PAT-4711_cell-b.png", "PAT-4711_smear.jpg"]
REFERENCES = {
    "X-FHIR-Subject": "Patient/pat-4711",
    "X-FHIR-Specimen": "https://fhir.example.org/r4/Specimen/spec-9",
    "X-FHIR-Based-On": "ServiceRequest/order-77",
}


def _files() -> list[tuple[str, tuple[str, bytes, str]]]:
    sources = [CNMC_PNGS[0], CNMC_PNGS[1], OOD_JPEGS[0]]
    types = ["image/png", "image/png", "image/jpeg"]
    return [
        ("files", (name, path.read_bytes(), media))
        for name, path, media in zip(NAMES, sources, types, strict=True)
    ]


async def _classify(client: httpx.AsyncClient, accept: str, **headers: str) -> httpx.Response:
    return await client.post("/v1/classify", files=_files(), headers={"Accept": accept, **headers})


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _component(observation: dict[str, Any], code: str) -> dict[str, Any]:
    found = [c for c in observation["component"] if c["code"]["coding"][0]["code"] == code]
    assert len(found) == 1, code
    return found[0]


def test_accept_negotiation() -> None:
    assert negotiate(None) is ReportFormat.JSON
    assert negotiate("*/*") is ReportFormat.JSON
    assert negotiate("text/html") is ReportFormat.JSON  # nothing better: the service's JSON
    assert negotiate("application/fhir+json") is ReportFormat.FHIR
    assert negotiate("application/hl7-v2") is ReportFormat.HL7V2
    assert negotiate("x-application/hl7-v2+er7") is ReportFormat.HL7V2
    assert negotiate("application/json;q=0.5, application/fhir+json") is ReportFormat.FHIR
    assert negotiate("application/fhir+json;q=0.2, application/hl7-v2;q=0.9") is (
        ReportFormat.HL7V2
    )
    assert negotiate("application/fhir+json, application/json") is ReportFormat.JSON
    assert negotiate("application/fhir+json;q=0") is ReportFormat.JSON


async def test_fhir_bundle_is_valid_and_carries_the_results(client: httpx.AsyncClient) -> None:
    native = (await _classify(client, "application/json")).json()
    response = await _classify(client, "application/fhir+json", **REFERENCES)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    Bundle.model_validate_json(response.content)  # parses and validates as FHIR R4
    bundle = response.json()
    assert bundle["type"] == "transaction"
    assert all(e["fullUrl"].startswith("urn:uuid:") and e["request"] for e in bundle["entry"])
    for name in NAMES:  # neither the names nor any part of them leaks
        assert name not in response.text and "PAT-4711" not in response.text

    (device,) = _resources(bundle, "Device")
    device_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is device)
    assert device["deviceName"][0]["name"] == "tiny" and device["version"][0]["value"] == "2"
    digest = client.app.state.dataplane.registry.loaded("tiny", 2).card.files  # type: ignore[attr-defined]
    assert device["identifier"] == [
        {"system": MODEL_DIGEST_SYSTEM, "value": digest["saved_model.pb"]}
    ]
    assert "Research use only" in device["safety"][0]["text"]

    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["subject"] == {"reference": "Patient/pat-4711"}
    assert report["specimen"] == [{"reference": REFERENCES["X-FHIR-Specimen"]}]
    assert report["basedOn"] == [{"reference": "ServiceRequest/order-77"}]
    assert "Intended use" in report["conclusion"]

    observations = _resources(bundle, "Observation")
    assert len(report["result"]) == len(observations)
    for observation in observations:
        assert observation["device"] == {"reference": device_url}
        assert observation["subject"] == {"reference": "Patient/pat-4711"}
        assert observation["status"] == "preliminary"
    cells = [o for o in observations if o["code"]["coding"][0]["code"] == "cell-class"]
    assert len(cells) == 3
    for cell, result in zip(cells, native["results"], strict=True):
        coding = cell["valueCodeableConcept"]["coding"][0]
        assert (coding["system"], coding["code"]) == (CELL_CLASS_SYSTEM, result["label"])
        probability = _component(cell, "blast-probability")["valueQuantity"]["value"]
        assert probability == pytest.approx(result["blast_probability"], abs=1e-6)
        ood = _component(cell, "out-of-distribution")["valueBoolean"]
        assert ood is result["out_of_distribution"]
        assert cell["interpretation"][0]["coding"][0]["code"] == (
            "A" if result["label"] == "all" else "N"
        )
    assert [_component(c, "out-of-distribution")["valueBoolean"] for c in cells] == [
        False,
        False,
        True,
    ]
    assert "note" in cells[2] and "note" not in cells[0]
    summary = {
        o["code"]["coding"][0]["code"]: o["valueQuantity"]["value"]
        for o in observations
        if "valueQuantity" in o
    }
    assert summary["cell-count"] == 3 and summary["ood-count"] == 1
    assert summary["blast-count"] == native["summary"]["counts"]["all"]
    assert summary["blast-fraction"] == pytest.approx(native["summary"]["blast_fraction"] * 100)

    (provenance,) = _resources(bundle, "Provenance")
    assert provenance["agent"][0]["who"]["reference"] == device_url
    targets = {t["reference"] for t in provenance["target"]}
    assert len(targets) == len(observations) + 1


async def test_fhir_without_references_has_no_subject(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/classify",
        content=CNMC_PNGS[0].read_bytes(),
        headers={"Content-Type": "image/png", "Accept": "application/fhir+json"},
    )
    bundle = Bundle.model_validate_json(response.content)
    assert bundle.entry and not any(getattr(e.resource, "subject", None) for e in bundle.entry)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-FHIR-Subject", "Specimen/1"),  # wrong resource type for the element
        ("X-FHIR-Subject", "Patient/has space"),
        ("X-FHIR-Specimen", "Specimen/" + "x" * 65),  # FHIR ids are at most 64 characters
        ("X-FHIR-Based-On", "javascript:alert(1)"),
    ],
)
async def test_invalid_references_are_refused(
    client: httpx.AsyncClient, header: str, value: str
) -> None:
    response = await _classify(client, "application/fhir+json", **{header: value})
    assert_error(response, 422, "invalid_reference")
    assert header in response.json()["error"]["detail"]


async def test_hl7_oru_is_valid_and_carries_the_results(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    native = (await _classify(client, "application/json")).json()
    response = await _classify(client, "application/hl7-v2", **REFERENCES)
    assert response.status_code == 200, response.text
    logged = " ".join(str(record.__dict__) for record in caplog.records)
    assert any(record.name == "leuk.access" for record in caplog.records)
    assert "pat-4711" not in logged and "PAT-4711" not in logged
    assert response.headers["content-type"].startswith("x-application/hl7-v2+er7")
    text = response.text
    assert "\n" not in text and text.endswith("\r")
    for name in NAMES:
        assert name not in text and "PAT-4711" not in text
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()  # raises on any structure, datatype or length violation
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_12.to_er7() == "2.5.1"

    lines = [s.split("|") for s in text.split("\r") if s]
    segments = {fields[0]: fields for fields in reversed(lines)}  # the first of each kind
    assert segments["PID"][3] == "pat-4711"
    assert segments["OBR"][2] == "order-77" and segments["OBR"][25] == "P"
    assert segments["SPM"][2] == "spec-9"
    assert "Intended use" in segments["NTE"][3]

    obx = [s.split("|") for s in text.split("\r") if s.startswith("OBX|")]
    assert all(fields[11] == "P" and fields[18].startswith("tiny-v2^^sha256:") for fields in obx)
    by_code = {(f[3].split("^")[0], f[4]): f for f in obx}
    for result in native["results"]:
        index = str(result["index"])
        label = by_code[("cell-class", index)]
        assert label[5].split("^")[0] == result["label"]
        assert label[8] == ("A" if result["label"] == "all" else "N")
        probability = float(by_code[("blast-probability", index)][5])
        assert probability == pytest.approx(result["blast_probability"], abs=1e-6)
        ood = by_code[("out-of-distribution", index)][5].split("^")[0]
        assert ood == ("Y" if result["out_of_distribution"] else "N")
    assert by_code[("cell-count", "")][5] == "3"
    assert by_code[("blast-count", "")][5] == str(native["summary"]["counts"]["all"])


async def test_default_answer_is_unchanged_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/classify", files=_files(), headers={"X-FHIR-Subject": "Patient/PAT-1"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "PAT-1" not in response.text  # references only appear in FHIR and HL7 answers
    loose = await client.post(
        "/v1/classify", files=_files(), headers={"X-FHIR-Subject": "not a reference"}
    )
    assert loose.status_code == 200  # a JSON answer carries no reference: only its length
    too_long = await client.post(
        "/v1/classify", files=_files(), headers={"X-FHIR-Subject": "Patient/" + "1" * 600}
    )
    assert too_long.status_code == 422
    assert set(response.json()) == {"request_id", "model", "version", "results", "summary"}


async def test_openapi_documents_the_formats(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    classify = schema["paths"]["/v1/classify"]["post"]
    assert {"application/json", "application/fhir+json", "x-application/hl7-v2+er7"} <= set(
        classify["responses"]["200"]["content"]
    )
    headers = {p["name"] for p in classify["parameters"] if p["in"] == "header"}
    assert {"X-FHIR-Subject", "X-FHIR-Specimen", "X-FHIR-Based-On"} <= headers
    assert "/v2/models/{name}/infer" in schema["paths"]
    json.dumps(schema)


def _result(index: int, blast_probability: float, ood: bool) -> ImageResult:
    check = InputCheckOut(
        out_of_distribution=ood,
        reasons=["no_black_background"] if ood else [],
        border_dark_fraction=0.0 if ood else 1.0,
        foreground_fraction=0.1,
    )
    return ImageResult(
        index=index, label="all" if blast_probability >= 0.5 else "hem", label_description="",
        probabilities={"hem": 1 - blast_probability, "all": blast_probability},
        blast_probability=blast_probability, threshold=0.5, model="m", version=1,
        out_of_distribution=ood, input_check=check, warnings=[],
    )  # fmt: skip


def _identity(intended_use: str = "Research use only.") -> ModelIdentity:
    return ModelIdentity(
        name="m", version=1, saved_model_sha256="0" * 64, intended_use=intended_use,
        labels=("hem", "all"), positive_label="all", threshold=0.5,
        label_descriptions={"hem": "normal & healthy", "all": "blast"},
    )  # fmt: skip


def test_fhir_bundle_of_64_images_validates() -> None:
    """Every branch of the renderer at the largest request: OOD or not, blast or not, all
    references, and none in distribution (no in-distribution fraction)."""
    results = [_result(i, (i * 37 % 101) / 100, ood=i % 5 == 0) for i in range(64)]
    references = CallerReferences.from_headers(REFERENCES)
    for batch in (results, [r for r in results if r.out_of_distribution]):
        response = ClassifyResponse(request_id="r-64", model="m", version=1, results=batch)
        body = bundle_json(response, _identity(), references, datetime.now(UTC))
        bundle = Bundle.model_validate_json(body)
        assert bundle.entry is not None
        codes = [
            e.resource.code.coding[0].code
            for e in bundle.entry
            if e.resource.get_resource_type() == "Observation"
        ]
        assert codes.count("cell-class") == len(batch)
        in_distribution = "blast-fraction-in-distribution" in codes
        assert in_distribution is (batch is results)


def test_hl7_escapes_separators_in_free_text() -> None:
    result = _result(0, 0.1, ood=False)
    tricky = "R&D use | not ^clinical~ \\ ever\nsecond line"
    model = _identity(intended_use=tricky)
    response = ClassifyResponse(request_id="r|1", model="m", version=1, results=[result])
    text = render_oru(response, model, CallerReferences(), datetime.now(UTC))
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    segments = [s for s in text.split("\r") if s]
    assert [s[:3] for s in segments].count("NTE") == 1 and len(segments[0].split("|")) == 18
    note = next(s for s in segments if s.startswith("NTE")).split("|")
    assert len(note) == 4  # the "|" in the text did not open a field
    assert "R\\T\\D use \\F\\ not \\S\\clinical\\R\\ \\E\\ ever second line" in note[3]
    assert "\n" not in text
