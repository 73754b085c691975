"""The audit trail's tables (SQLAlchemy Core). Migrations in migrations/ create them.

One append-only table holds every record (kinds ``request``, ``image`` and ``purge``) in
one hash chain: ``seq`` numbers records without gaps, ``prev_hash`` is the hash of record
``seq - 1`` and ``hash`` covers every other column (app/audit/chain.py). The one-row
``audit_chain_head`` table holds the newest record's seq and hash; writers lock it for the
length of their insert, so replicas sharing a database append to one chain, never fork it.
After a purge, ``anchor_seq``/``anchor_hash`` name the last purged record: the first
remaining record must link to it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

GENESIS_HASH = "0" * 64

metadata = MetaData()

audit_record = Table(
    "audit_record",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # UTC, ISO 8601 with microseconds and a Z: sorts as text, the same in every database.
    Column("recorded_at", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("request_id", String(128)),
    Column("caller", String(64)),
    Column("route", String(128)),
    Column("sample_id", String(128)),
    Column("model", String(128)),
    Column("model_version", Integer),
    Column("model_digest", String(64)),
    Column("threshold", Float),
    Column("status", Integer),
    Column("error_code", String(64)),
    Column("latency_ms", Float),
    Column("n_images", Integer),
    Column("image_index", Integer),
    Column("sha256", String(64)),
    Column("format", String(16)),
    Column("width", Integer),
    Column("height", Integer),
    Column("byte_size", BigInteger),
    Column("label", String(64)),
    Column("blast_probability", Float),
    Column("out_of_distribution", Boolean),
    Column("ood_reasons", Text),  # canonical JSON list
    Column("warnings", Text),  # canonical JSON list
    Column("details", Text),  # canonical JSON object (purge records)
    Index("ix_audit_record_recorded_at", "recorded_at"),
    Index("ix_audit_record_request_id", "request_id"),
    Index("ix_audit_record_sample_id", "sample_id"),
    Index("ix_audit_record_model_version", "model", "model_version"),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("anchor_hash", String(64), nullable=False),
    # Last write check (health): outside the chain, changed by nothing else.
    Column("checked_at", String(32)),
)

# Columns a caller fills in; seq, prev_hash and hash are assigned by the store.
CONTENT_COLUMNS = tuple(
    c.name for c in audit_record.columns if c.name not in ("seq", "prev_hash", "hash")
)
JSON_COLUMNS = ("ood_reasons", "warnings", "details")
