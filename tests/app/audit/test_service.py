"""The audit trail through the real HTTP stack: what a classify request leaves behind,
who may read it, and what happens when the audit store cannot be written."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.audit.store import AuditStore
from app.settings import Settings
from bench.postgres import PostgresServer
from tests.app.conftest import CNMC_PNGS, OOD_JPEGS, serve
from tests.app.test_api import assert_error, metric_value

pytestmark = pytest.mark.anyio

PNG = CNMC_PNGS[0].read_bytes()
AS_PNG = {"content-type": "image/png"}
JPEG = OOD_JPEGS[0].read_bytes()
KEYS = ["root:admin:adm-secret", "lab-a:classify:lab-secret", "viewer:read:read-secret", "old"]
ADMIN = {"x-api-key": "adm-secret"}
LAB = {"x-api-key": "lab-secret"}
VIEWER = {"x-api-key": "read-secret"}


async def audit_records(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


async def test_classify_leaves_one_request_and_one_record_per_image(
    make_settings: Callable[..., Settings], audit_url: str, tiny_store: Path
) -> None:
    async with serve(make_settings(api_keys=KEYS, audit_database_url=audit_url)) as client:
        files = [
            ("files", ("patient-4711-smith.png", PNG, "image/png")),
            ("files", ("second.jpg", JPEG, "image/jpeg")),
        ]
        headers = {**LAB, "x-request-id": "lab-run-1", "x-sample-id": "ACC-0042"}
        response = await client.post(
            "/v1/models/tiny/versions/1/classify", files=files, headers=headers
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]

        records = await audit_records(client, sample_id="ACC-0042")
        card = json.loads((tiny_store / "tiny" / "1" / "model_card.json").read_text())

    assert [r["kind"] for r in records] == ["request", "image", "image"]
    request, *images = records
    assert request["request_id"] == "lab-run-1" and request["caller"] == "lab-a"
    assert request["route"] == "/v1/models/{name}/versions/{version}/classify"
    assert (request["model"], request["model_version"]) == ("tiny", 1)
    assert request["model_digest"] == card["files"]["saved_model.pb"]
    assert request["threshold"] == card["threshold"]
    assert request["status"] == 200 and request["error_code"] is None
    assert request["n_images"] == 2 and request["latency_ms"] > 0
    assert request["recorded_at"].endswith("Z")
    for image, payload, result, fmt in zip(
        images, (PNG, JPEG), results, ("PNG", "JPEG"), strict=True
    ):
        assert image["sha256"] == hashlib.sha256(payload).hexdigest()
        assert image["byte_size"] == len(payload) and image["format"] == fmt
        assert image["width"] > 0 and image["height"] > 0
        assert image["label"] == result["label"]
        assert image["blast_probability"] == result["blast_probability"]
        assert image["out_of_distribution"] == result["out_of_distribution"]
        assert image["ood_reasons"] == result["input_check"]["reasons"]
        assert image["warnings"] == result["warnings"]
        assert image["sample_id"] == "ACC-0042"
    assert images[1]["out_of_distribution"] is True  # the smear-field JPEG
    assert "patient-4711" not in json.dumps(records)  # file names are never stored


async def test_rejected_requests_are_recorded_with_their_outcome(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(make_settings()) as client:
        bad = b"not an image at all"
        response = await client.post(
            "/v1/classify",
            content=bad,
            headers={"content-type": "image/png", "x-request-id": "bad-1"},
        )
        assert_error(response, 422, "invalid_image")
        assert_error(
            await client.post("/v1/models/nope/classify", content=PNG), 404, "model_not_found"
        )
        assert_error(
            await client.post(
                "/v1/classify", content=PNG, headers={**AS_PNG, "x-sample-id": "has space"}
            ),
            422,
            "validation_error",
        )
        records = await audit_records(client, outcome="invalid_image")
        missing = await audit_records(client, outcome="404")
        everything = await audit_records(client)

    request, image = records
    assert request["request_id"] == "bad-1" and request["caller"] == "anonymous"
    assert (request["status"], request["error_code"], request["n_images"]) == (
        422,
        "invalid_image",
        1,
    )
    assert image["sha256"] == hashlib.sha256(bad).hexdigest() and image["label"] is None
    assert [(r["kind"], r["error_code"], r["model"]) for r in missing] == [
        ("request", "model_not_found", None)
    ]
    assert len(everything) == 4  # 2 + 1 + the validation error


async def test_roles_decide_who_classifies_and_who_reads_the_trail(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(make_settings(api_keys=KEYS)) as client:
        image = {"content-type": "image/png"}
        assert (
            await client.post("/v1/classify", content=PNG, headers={**LAB, **image})
        ).status_code == 200
        old = {"x-api-key": "old", **image}
        assert (await client.post("/v1/classify", content=PNG, headers=old)).status_code == 200
        assert (
            await client.post("/v1/classify", content=PNG, headers={**ADMIN, **image})
        ).status_code == 200
        assert_error(
            await client.post("/v1/classify", content=PNG, headers={**VIEWER, **image}),
            403,
            "forbidden",
        )
        assert (await client.get("/v1/models", headers=VIEWER)).status_code == 200
        for headers in (LAB, VIEWER, {"x-api-key": "old"}):
            assert_error(await client.get("/v1/audit", headers=headers), 403, "forbidden")
        assert_error(await client.get("/v1/audit"), 401, "unauthorized")

        callers = [r["caller"] for r in await audit_records(client, kind="request")]
        page = await client.get("/v1/audit", params={"kind": "request", "limit": 2}, headers=ADMIN)
        after = page.json()["next_after_seq"]
        rest = await client.get(
            "/v1/audit", params={"kind": "request", "after_seq": after}, headers=ADMIN
        )

    assert callers == ["lab-a", "key-1", "root", "viewer"]  # the read key's refusal too
    assert [r["caller"] for r in page.json()["records"]] == ["lab-a", "key-1"]
    assert [(r["caller"], r["status"], r["error_code"]) for r in rest.json()["records"]] == [
        ("root", 200, None),
        ("viewer", 403, "forbidden"),
    ]
    assert rest.json()["next_after_seq"] is None


async def test_audit_health_and_metrics_when_writing(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(make_settings()) as client:
        for _ in range(3):
            assert (
                await client.post("/v1/classify", content=PNG, headers=AS_PNG)
            ).status_code == 200
        health = (await client.get("/health")).json()["audit"]
        metrics = (await client.get("/metrics")).text
    assert health["state"] == "ok" and health["backend"] == "sqlite"
    assert health["failure_policy"] == "fail_closed"
    assert metric_value(metrics, "leuk_audit_records_written_total") == 6
    assert metric_value(metrics, "leuk_audit_write_seconds_count") >= 1
    assert metric_value(metrics, "leuk_audit_write_failures_total") == 0


@contextmanager
def read_only(database: Path) -> Iterator[None]:
    """Make the SQLite database and its WAL unwritable, even for root (chattr +i)."""
    files = [database, database.with_name(database.name + "-wal")]
    try:
        subprocess.run(["chattr", "+i", *map(str, files)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make the database immutable here (chattr): {exc}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False, capture_output=True)


@pytest.mark.parametrize("policy", ["fail_closed", "serve_and_count"])
async def test_read_only_sqlite(
    make_settings: Callable[..., Settings], audit_data_dir: Path, policy: str
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available")
    async with serve(make_settings(audit_failure_policy=policy)) as client:
        assert (await client.post("/v1/classify", content=PNG, headers=AS_PNG)).status_code == 200
        with read_only(audit_data_dir / "audit.sqlite3"):
            response = await client.post(
                "/v1/classify", content=PNG, headers={**AS_PNG, "x-request-id": "lost"}
            )
            health = await client.get("/health")
            ready = await client.get("/health/ready")
            metrics = (await client.get("/metrics")).text
        if policy == "fail_closed":
            assert_error(response, 503, "audit_unavailable")
            assert "results" not in response.text
            assert health.status_code == 503
            assert_error(ready, 503, "not_ready")  # a load balancer sends work elsewhere
            assert metric_value(metrics, "leuk_audit_records_lost_total", outcome="refused") == 1
        else:
            assert response.status_code == 200 and response.json()["results"]
            assert health.status_code == 200 and ready.status_code == 200
            assert metric_value(metrics, "leuk_audit_records_lost_total", outcome="served") == 1
        assert health.json()["audit"]["state"] == "failing"
        assert metric_value(metrics, "leuk_audit_write_failures_total") >= 1
        # Writable again: the next request is recorded and health recovers.
        assert (await client.post("/v1/classify", content=PNG, headers=AS_PNG)).status_code == 200
        assert (await client.get("/health")).json()["audit"]["state"] == "ok"
        assert (await client.get("/health/ready")).status_code == 200
        recorded = await audit_records(client, kind="request")
    assert "lost" not in [r["request_id"] for r in recorded if r["status"] == 200]
    store = AuditStore(make_settings().audit_url())
    assert store.verify().ok
    store.close()


async def test_stopped_postgresql_fails_closed_then_recovers(
    make_settings: Callable[..., Settings], postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    async with serve(make_settings(audit_database_url=url)) as client:
        assert (await client.post("/v1/classify", content=PNG, headers=AS_PNG)).status_code == 200
        postgres.stop()
        try:
            response = await client.post("/v1/classify", content=PNG, headers=AS_PNG)
            assert_error(response, 503, "audit_unavailable")
            health = await client.get("/health")
            assert health.status_code == 503 and health.json()["audit"]["state"] == "failing"
        finally:
            postgres.start()
        assert (await client.post("/v1/classify", content=PNG, headers=AS_PNG)).status_code == 200
        assert (await client.get("/health")).json()["audit"]["state"] == "ok"
        statuses = [r["status"] for r in await audit_records(client, kind="request")]
    assert statuses == [200, 200]  # the refused request's record could not be written either
    store = AuditStore(url)
    assert store.verify().ok
    store.close()


async def test_audit_off(make_settings: Callable[..., Settings], audit_data_dir: Path) -> None:
    async with serve(make_settings(audit_enabled=False)) as client:
        assert (await client.post("/v1/classify", content=PNG, headers=AS_PNG)).status_code == 200
        assert (await client.get("/health")).json()["audit"]["state"] == "disabled"
        assert (await client.get("/v1/audit")).json() == {"records": [], "next_after_seq": None}
    assert not audit_data_dir.exists()


async def test_audit_filters_refuse_what_the_schema_refuses(
    make_settings: Callable[..., Settings],
) -> None:
    """Found by schemathesis: a version past the column's range was a 500, a number was
    read as a time, and the outcome rule was not in the schema."""
    async with serve(make_settings(api_keys=KEYS)) as client:
        for params in (
            {"model_version": str(2**80)},
            {"until": "0.5"},
            {"since": "2026-02-31"},
            {"outcome": "Not An Outcome"},
            {"sample_id": "has space"},
        ):
            response = await client.get("/v1/audit", params=params, headers=ADMIN)
            assert response.status_code == 422, (params, response.text)
        ok = await client.get(
            "/v1/audit", params={"since": "2026-01-01T00:00:00Z", "outcome": "422"}, headers=ADMIN
        )
        assert ok.status_code == 200 and ok.json()["records"] == []
        schema = (await client.get("/openapi.json")).json()
        classify = schema["paths"]["/v1/classify"]["post"]["parameters"]
        (sample,) = [p for p in classify if p["name"] == "X-Sample-ID"]
        assert "pattern" in sample["schema"] or any(
            "pattern" in option for option in sample["schema"].get("anyOf", [])
        )


async def test_requests_refused_for_no_key_and_explanations_are_recorded(
    make_settings: Callable[..., Settings],
) -> None:
    """Every classifying route is audited: a request refused before routing (no key) is
    recorded as an anonymous caller, and /v1/explain like classify (here refused: the tiny
    test model has no explain signature)."""
    async with serve(make_settings(api_keys=KEYS)) as client:
        image = {"content-type": "image/png"}
        no_key = await client.post("/v1/classify", content=PNG, headers=image)
        assert_error(no_key, 401, "unauthorized")
        explain = await client.post("/v1/explain", content=PNG, headers={**LAB, **image})
        assert explain.status_code == 409
        records = await audit_records(client, kind="request")
    assert [(r["caller"], r["route"], r["status"], r["error_code"]) for r in records] == [
        ("anonymous", "/v1/classify", 401, "unauthorized"),
        ("lab-a", "/v1/explain", 409, "explain_unsupported"),
    ]
