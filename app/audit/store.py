"""Where audit records are kept: SQLite (embedded, WAL) or PostgreSQL, through SQLAlchemy.

Appending is the only write (besides the purge command): ``append`` takes a batch, locks
the chain head (PostgreSQL: ``SELECT ... FOR UPDATE`` on its row; SQLite: ``BEGIN
IMMEDIATE``, the database's one write lock), numbers and hashes the records, inserts them
and moves the head, in one transaction. A batch is all-or-nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import Connection, make_url

from app.audit.chain import Verification, canonical_json, record_hash, verify_records
from app.audit.tables import (
    CONTENT_COLUMNS,
    JSON_COLUMNS,
    audit_chain_head,
    audit_record,
)

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "audit_read_only"  # execution option of reading connections
_MIGRATION_LOCK_ID = 0x4C45554B  # PostgreSQL advisory lock: one replica migrates at a time


def utc_timestamp(moment: datetime | None = None) -> str:
    """The stored time format: UTC, microseconds, ``Z`` (sorts as text)."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RecordFilter:
    since: str | None = None  # stored time format, inclusive
    until: str | None = None  # exclusive
    request_id: str | None = None
    sample_id: str | None = None
    model: str | None = None
    model_version: int | None = None
    status: int | None = None
    error_code: str | None = None
    kind: str | None = None
    after_seq: int = 0


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # A database that does not answer fails the write in seconds, not at TCP's timeout.
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=4,
            connect_args={"connect_timeout": 5},
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        # Transactions are begun explicitly (below), as BEGIN IMMEDIATE: take the write
        # lock before reading the chain head, or two processes could both extend it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a committed record survives power loss
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Readers take no write lock: in WAL mode they read a snapshot while writers go on.
        reading = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


class AuditStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.backend = self.engine.dialect.name
        self._migrated = False
        self._migrate_lock = threading.Lock()

    def reading(self) -> Connection:
        """A connection for reads only (on SQLite it takes no write lock)."""
        return self.engine.connect().execution_options(**{READ_ONLY: True})

    def describe(self) -> str:
        """The URL without its password (for health and logs)."""
        return make_url(self.url).render_as_string(hide_password=True)

    # --- schema --------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration (idempotent, cheap once done)."""
        with self._migrate_lock:
            if self._migrated:
                return
            with self.engine.begin() as connection:
                if self.backend == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                    )
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            self._migrated = True

    # --- writing -------------------------------------------------------------------------
    def append(self, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Chain and insert ``records`` in one transaction; their sequence numbers."""
        self.migrate()
        with self.engine.begin() as connection:
            return _chain_insert(connection, records)

    def check_writable(self) -> None:
        """Commit a write outside the chain (the head's ``checked_at``): raises when the
        database cannot be written, which a read would not show (a read-only file)."""
        self.migrate()
        with self.engine.begin() as connection:
            connection.execute(
                update(audit_chain_head)
                .where(audit_chain_head.c.id == 1)
                .values(checked_at=utc_timestamp())
            )

    # --- reading -------------------------------------------------------------------------
    def query(self, where: RecordFilter, limit: int) -> list[dict[str, Any]]:
        """Records matching ``where`` with seq > where.after_seq, ascending, at most limit."""
        c = audit_record.c
        statement = select(audit_record).where(c.seq > where.after_seq)
        conditions = {
            c.request_id: where.request_id,
            c.sample_id: where.sample_id,
            c.model: where.model,
            c.model_version: where.model_version,
            c.status: where.status,
            c.error_code: where.error_code,
            c.kind: where.kind,
        }
        for column, value in conditions.items():
            if value is not None:
                statement = statement.where(column == value)
        if where.since is not None:
            statement = statement.where(c.recorded_at >= where.since)
        if where.until is not None:
            statement = statement.where(c.recorded_at < where.until)
        statement = statement.order_by(c.seq).limit(limit)
        with self.reading() as connection:
            return [_decoded(row._asdict()) for row in connection.execute(statement)]

    def iter_records(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every record in seq order, read in pages (bounded memory)."""
        after = 0
        while True:
            page = self.query(RecordFilter(after_seq=after), batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1]["seq"]

    def count(self) -> int:
        with self.reading() as connection:
            return int(connection.execute(select(func.count()).select_from(audit_record)).one()[0])

    def verify(self) -> Verification:
        """Walk the whole chain from the anchor to the head (streamed, raw stored values)."""
        self.migrate()
        with self.reading() as connection:
            head = connection.execute(select(audit_chain_head)).one()
            rows = (
                row._mapping
                for row in connection.execution_options(yield_per=5000).execute(
                    select(audit_record).order_by(audit_record.c.seq)
                )
            )
            return verify_records(
                rows, int(head.anchor_seq), str(head.anchor_hash), int(head.seq), str(head.hash)
            )

    # --- retention -----------------------------------------------------------------------
    def purge(self, older_than_days: int, by: str, now: datetime | None = None) -> dict[str, Any]:
        """Delete the oldest records (a prefix of the chain) recorded before the cutoff, and
        append a ``purge`` record saying what went, who purged and the new chain anchor."""
        self.migrate()
        cutoff = utc_timestamp((now or datetime.now(UTC)) - timedelta(days=older_than_days))
        c = audit_record.c
        with self.engine.begin() as connection:
            head = connection.execute(
                select(audit_chain_head).where(audit_chain_head.c.id == 1).with_for_update()
            ).one()
            keep_from = connection.execute(
                select(func.min(c.seq)).where(c.recorded_at >= cutoff)
            ).scalar()
            last = (int(keep_from) - 1) if keep_from is not None else int(head.seq)
            last_row = connection.execute(select(c.seq, c.hash).where(c.seq == last)).first()
            purged = 0
            details: dict[str, Any] = {
                "older_than_days": older_than_days,
                "cutoff": cutoff,
                "purged": 0,
                "first_seq": None,
                "last_seq": None,
                "anchor_seq": int(head.anchor_seq),
                "anchor_hash": str(head.anchor_hash),
            }
            if last_row is not None:
                first = connection.execute(select(func.min(c.seq))).scalar()
                purged = connection.execute(audit_record.delete().where(c.seq <= last)).rowcount
                connection.execute(
                    update(audit_chain_head)
                    .where(audit_chain_head.c.id == 1)
                    .values(anchor_seq=last, anchor_hash=last_row.hash)
                )
                details.update(
                    purged=purged,
                    first_seq=first,
                    last_seq=last,
                    anchor_seq=last,
                    anchor_hash=str(last_row.hash),
                )
            # Same transaction: records never disappear without the record of their purge.
            purge_record = {
                "recorded_at": utc_timestamp(),
                "kind": "purge",
                "caller": by,
                "details": details,
            }
            _chain_insert(connection, [purge_record])
        return details

    def close(self) -> None:
        self.engine.dispose()


_INSERT = insert(audit_record)


def _chain_insert(connection: Connection, records: Sequence[Mapping[str, Any]]) -> list[int]:
    head = connection.execute(
        select(audit_chain_head.c.seq, audit_chain_head.c.hash)
        .where(audit_chain_head.c.id == 1)
        .with_for_update()
    ).one()
    seq, prev = int(head.seq), str(head.hash)
    rows = []
    for record in records:
        seq += 1
        content = {name: record.get(name) for name in CONTENT_COLUMNS}
        for name in JSON_COLUMNS:
            if content[name] is not None and not isinstance(content[name], str):
                content[name] = canonical_json(content[name])
        digest = record_hash(seq, prev, content)
        rows.append({**content, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    if rows:
        connection.execute(_INSERT, rows)  # executemany of one compiled (cached) statement
        connection.execute(
            update(audit_chain_head).where(audit_chain_head.c.id == 1).values(seq=seq, hash=prev)
        )
    return list(range(int(head.seq) + 1, seq + 1))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_COLUMNS:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    if row.get("out_of_distribution") is not None:
        row["out_of_distribution"] = bool(row["out_of_distribution"])
    return row
