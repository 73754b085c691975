"""The audit trail: one hash-chained record table and its chain head.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("caller", sa.String(64)),
        sa.Column("route", sa.String(128)),
        sa.Column("sample_id", sa.String(128)),
        sa.Column("model", sa.String(128)),
        sa.Column("model_version", sa.Integer()),
        sa.Column("model_digest", sa.String(64)),
        sa.Column("threshold", sa.Float()),
        sa.Column("status", sa.Integer()),
        sa.Column("error_code", sa.String(64)),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("n_images", sa.Integer()),
        sa.Column("image_index", sa.Integer()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("format", sa.String(16)),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("byte_size", sa.BigInteger()),
        sa.Column("label", sa.String(64)),
        sa.Column("blast_probability", sa.Float()),
        sa.Column("out_of_distribution", sa.Boolean()),
        sa.Column("ood_reasons", sa.Text()),
        sa.Column("warnings", sa.Text()),
        sa.Column("details", sa.Text()),
    )
    op.create_index("ix_audit_record_recorded_at", "audit_record", ["recorded_at"])
    op.create_index("ix_audit_record_request_id", "audit_record", ["request_id"])
    op.create_index("ix_audit_record_sample_id", "audit_record", ["sample_id"])
    op.create_index("ix_audit_record_model_version", "audit_record", ["model", "model_version"])
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
        sa.Column("checked_at", sa.String(32)),
    )
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "seq": 0,
                "hash": GENESIS_HASH,
                "anchor_seq": 0,
                "anchor_hash": GENESIS_HASH,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    op.drop_table("audit_record")
