"""The hash chain: each record's hash covers its content and the previous record's hash.

``hash = sha256(canonical JSON of {seq, prev_hash, every content column})``. Canonical JSON
has sorted keys, no spaces and Python's shortest round-trip floats, and the values are
normalised per column type first (a boolean read back from SQLite as 1 is ``true``), so the
same record hashes the same in SQLite and PostgreSQL. Editing any column of a stored record,
deleting one or reordering them breaks the chain at that record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.audit.tables import CONTENT_COLUMNS, audit_record

_BOOLEAN = frozenset(c.name for c in audit_record.columns if c.type.python_type is bool)
_FLOAT = frozenset(c.name for c in audit_record.columns if c.type.python_type is float)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normalised(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _BOOLEAN:
        return bool(value)
    if name in _FLOAT:
        return float(value)
    return value


def record_hash(seq: int, prev_hash: str, content: Mapping[str, Any]) -> str:
    body = {name: _normalised(name, content.get(name)) for name in CONTENT_COLUMNS}
    body["seq"] = int(seq)
    body["prev_hash"] = prev_hash
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    broken_seq: int | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.ok:
            span = f"seq {self.first_seq}..{self.last_seq}" if self.checked else "empty"
            return f"chain intact: {self.checked} records ({span})"
        return f"chain BROKEN at seq {self.broken_seq}: {self.reason} ({self.checked} checked)"


def verify_records(
    rows: Iterable[Mapping[Any, Any]],
    anchor_seq: int,
    anchor_hash: str,
    head_seq: int,
    head_hash: str,
) -> Verification:
    """Check rows (ascending seq) link from the anchor to the head; report the first break."""
    expected_seq, expected_prev = anchor_seq + 1, anchor_hash
    checked, first = 0, None
    for row in rows:
        seq = int(row["seq"])
        first = seq if first is None else first
        reason = _link_error(row, seq, expected_seq, expected_prev)
        if reason is not None:
            at = expected_seq if seq != expected_seq else seq
            return Verification(False, checked, first, expected_seq - 1, at, reason)
        checked += 1
        expected_seq, expected_prev = seq + 1, row["hash"]
    last = expected_seq - 1
    if last != head_seq:
        reason = f"the chain head says seq {head_seq}; the records end at {last}"
        return Verification(False, checked, first, last, last + 1, reason)
    if expected_prev != head_hash:
        reason = "the chain head's hash differs from the last record's hash"
        return Verification(False, checked, first, last, last, reason)
    return Verification(True, checked, first, last if checked else None)


def _link_error(
    row: Mapping[Any, Any], seq: int, expected_seq: int, expected_prev: str
) -> str | None:
    if seq != expected_seq:
        return f"record {expected_seq} is missing (the next stored record is {seq})"
    if row["prev_hash"] != expected_prev:
        return "prev_hash does not match the previous record's hash"
    if record_hash(seq, row["prev_hash"], row) != row["hash"]:
        return "the content does not match its hash (the record was modified)"
    return None
