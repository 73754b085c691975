"""The audit store on SQLite and on a real PostgreSQL: chaining, tamper evidence, purge,
concurrent writers (replicas) and the verify/export commands."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from app.audit.cli import export, main
from app.audit.store import AuditStore, RecordFilter, utc_timestamp


def _request(i: int, **extra: object) -> dict[str, object]:
    return {
        "recorded_at": utc_timestamp(),
        "kind": "request",
        "request_id": f"r{i}",
        "caller": "lab-a",
        "sample_id": f"S-{i % 3}",
        "model": "tiny",
        "model_version": 2,
        "threshold": 0.5,
        "status": 200,
        "latency_ms": 1.25 + i,
        **extra,
    }


def _image(i: int) -> dict[str, object]:
    return {
        "recorded_at": utc_timestamp(),
        "kind": "image",
        "request_id": f"r{i}",
        "image_index": 0,
        "sha256": "ab" * 32,
        "label": "all",
        "blast_probability": 0.1 + 0.7 / (i + 1),
        "out_of_distribution": i % 2 == 0,
        "ood_reasons": ["no_black_background"] if i % 2 == 0 else [],
        "warnings": [],
    }


@pytest.fixture
def store(audit_url: str) -> AuditStore:
    s = AuditStore(audit_url)
    yield s  # type: ignore[misc]
    s.close()


def test_records_chain_and_verify(store: AuditStore) -> None:
    seqs = store.append([record for i in range(5) for record in (_request(i), _image(i))])
    assert seqs == list(range(1, 11))
    assert store.append([_request(9)]) == [11]
    result = store.verify()
    assert result.ok and result.checked == 11 and (result.first_seq, result.last_seq) == (1, 11)
    rows = store.query(RecordFilter(), 100)
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    assert rows[1]["ood_reasons"] == ["no_black_background"]
    assert rows[1]["out_of_distribution"] is True


@pytest.mark.parametrize(
    ("column", "value"),
    [("label", "'hem'"), ("blast_probability", "0.01"), ("sample_id", "'S-999'")],
)
def test_editing_a_row_breaks_the_chain_at_that_row(
    store: AuditStore, audit_url: str, column: str, value: str
) -> None:
    store.append([record for i in range(6) for record in (_request(i), _image(i))])
    assert store.verify().ok
    target = 6 if column != "sample_id" else 5
    with store.engine.begin() as connection:  # an edit made directly in the database
        connection.execute(text(f"UPDATE audit_record SET {column} = {value} WHERE seq = {target}"))
    result = store.verify()
    assert not result.ok
    assert result.broken_seq == target and result.checked == target - 1
    assert "modified" in (result.reason or "")
    assert main(["--database-url", audit_url, "verify"]) == 1


def test_deleting_a_row_or_the_tail_is_detected(store: AuditStore) -> None:
    store.append([_request(i) for i in range(8)])
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_record WHERE seq = 4"))
    result = store.verify()
    assert not result.ok and result.broken_seq == 4 and "missing" in (result.reason or "")

    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_record WHERE seq >= 4"))
    result = store.verify()
    assert not result.ok and result.broken_seq == 4 and "head" in (result.reason or "")


def test_purge_removes_a_prefix_and_records_itself(store: AuditStore) -> None:
    old = utc_timestamp(datetime.now(UTC) - timedelta(days=40))
    store.append([_request(i, recorded_at=old) for i in range(5)])
    store.append([_request(i) for i in range(5, 8)])
    anchor_hash = store.query(RecordFilter(after_seq=4), 1)[0]["hash"]

    details = store.purge(30, by="alice")

    assert details["purged"] == 5 and (details["first_seq"], details["last_seq"]) == (1, 5)
    assert details["anchor_seq"] == 5 and details["anchor_hash"] == anchor_hash
    rows = store.query(RecordFilter(), 100)
    assert [r["seq"] for r in rows] == [6, 7, 8, 9]
    purge = rows[-1]
    assert purge["kind"] == "purge" and purge["caller"] == "alice"
    assert purge["details"]["purged"] == 5
    result = store.verify()
    assert result.ok and result.first_seq == 6 and result.checked == 4


def test_replicas_appending_at_once_never_fork_the_chain(audit_url: str) -> None:
    """Four stores (as four replicas: separate engines) append concurrently."""
    stores = [AuditStore(audit_url) for _ in range(4)]
    stores[0].migrate()
    errors: list[BaseException] = []

    def replica(store: AuditStore, n: int) -> None:
        try:
            for i in range(15):
                store.append([_request(n * 100 + i), _image(n * 100 + i)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    result = stores[0].verify()
    assert result.ok and result.checked == 4 * 15 * 2
    # Each batch is contiguous: a request's image record follows it.
    rows = stores[0].query(RecordFilter(), 1000)
    for request, image in zip(rows[::2], rows[1::2], strict=True):
        assert request["request_id"] == image["request_id"]
    for s in stores:
        s.close()


def test_export_writes_json_lines_with_filters(store: AuditStore) -> None:
    store.append([record for i in range(6) for record in (_request(i), _image(i))])
    out = io.StringIO()
    assert export(store, RecordFilter(sample_id="S-1", kind="request"), out, page=1) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["r1", "r4"]
    assert all(set(line) >= {"seq", "hash", "prev_hash", "recorded_at"} for line in lines)


def test_cli_export_and_purge(
    store: AuditStore, audit_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = utc_timestamp(datetime.now(UTC) - timedelta(days=10))
    store.append([_request(i, recorded_at=old) for i in range(3)] + [_request(3)])
    out = tmp_path / "audit.jsonl"
    assert main(["--database-url", audit_url, "export", "--out", str(out)]) == 0
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 2, 3, 4]
    assert main(["--database-url", audit_url, "purge", "--by", "ops"]) == 2  # no age given
    capsys.readouterr()
    purge = ["--database-url", audit_url, "purge", "--by", "ops", "--older-than-days", "5"]
    assert main(purge) == 0
    assert json.loads(capsys.readouterr().out)["purged"] == 3
    assert main(["--database-url", audit_url, "verify"]) == 0
    assert "chain intact: 2 records (seq 4..5)" in capsys.readouterr().out
