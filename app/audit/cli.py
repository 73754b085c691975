"""``python -m app.audit verify|export|purge``: the audit trail's operator commands.

The database is the service's (``LEUK_AUDIT_DATABASE_URL``, else SQLite under
``LEUK_DATA_DIR``) unless ``--database-url`` names another.

    python -m app.audit verify                     # exit 0: intact; 1: first broken link
    python -m app.audit export --out audit.jsonl   # JSON lines, seq order (filters as the API)
    python -m app.audit purge --by alice --older-than-days 3650
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from app.audit.store import AuditStore, RecordFilter, utc_timestamp
from app.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.audit", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: the service's)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check the hash chain; report the first broken link")
    export = commands.add_parser("export", help="write records as JSON lines")
    export.add_argument("--out", help="file (default: stdout)")
    export.add_argument("--since", help="recorded at or after (ISO 8601)")
    export.add_argument("--until", help="recorded before (ISO 8601)")
    export.add_argument("--request-id")
    export.add_argument("--sample-id")
    export.add_argument("--model-version", type=int)
    purge = commands.add_parser("purge", help="delete records older than N days (recorded)")
    purge.add_argument("--by", required=True, help="who purges (stored in the purge record)")
    purge.add_argument("--older-than-days", type=int, help="default: LEUK_AUDIT_RETENTION_DAYS")
    return parser


def _iso(value: str | None) -> str | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return utc_timestamp(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def export(store: AuditStore, where: RecordFilter, out: TextIO, page: int = 5000) -> int:
    written, after = 0, where.after_seq
    while True:
        records = store.query(
            RecordFilter(**{**where.__dict__, "after_seq": after}),
            page,
        )
        for record in records:
            out.write(json.dumps(record, sort_keys=True) + "\n")
        written += len(records)
        if len(records) < page:
            return written
        after = records[-1]["seq"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    store = AuditStore(args.database_url or settings.audit_url())
    try:
        return _run(args, settings, store)
    finally:
        store.close()


def _run(args: argparse.Namespace, settings: Settings, store: AuditStore) -> int:
    if args.command == "verify":
        started = time.perf_counter()
        result = store.verify()
        seconds = time.perf_counter() - started
        print(f"{result.describe()} in {seconds:.2f} s")
        return 0 if result.ok else 1
    if args.command == "export":
        where = RecordFilter(
            since=_iso(args.since),
            until=_iso(args.until),
            request_id=args.request_id,
            sample_id=args.sample_id,
            model_version=args.model_version,
        )
        if args.out:
            with open(args.out, "w", encoding="utf-8") as out:
                count = export(store, where, out)
        else:
            count = export(store, where, sys.stdout)
        print(f"exported {count} records", file=sys.stderr)
        return 0
    days = args.older_than_days or settings.audit_retention_days
    if days is None or days < 1:
        print(
            "purge needs --older-than-days N >= 1 (or LEUK_AUDIT_RETENTION_DAYS)", file=sys.stderr
        )
        return 2
    details: dict[str, Any] = store.purge(days, by=args.by)
    print(json.dumps(details, sort_keys=True))
    return 0
