"""One writer thread that appends audit records in batches (group commit), off the event loop.

Requests hand their records to ``submit`` and await the returned future; the thread takes
whatever has queued while the previous commit ran, writes it as one transaction (one fsync
for SQLite, one round trip for PostgreSQL) and resolves every future of that batch. So the
cost per request falls as load rises, and the event loop never waits on the database. The
queue is bounded: when it is full ``submit`` raises at once instead of letting memory grow
behind a dead database. A failed batch fails every future in it (the caller decides what a
lost record means), and the next batch tries again.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.audit.store import AuditStore

Records = list[dict[str, Any]]


class AuditQueueFull(Exception):
    pass


@dataclass
class _Pending:
    records: Records
    future: Future[list[int]] = field(default_factory=Future)


class AuditWriter:
    def __init__(
        self,
        store: AuditStore,
        max_queue: int,
        max_batch_records: int = 2048,
        on_commit: Callable[[int, float], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_queue)
        self._max_batch_records = max_batch_records
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything already submitted, then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, records: Records) -> Future[list[int]]:
        pending = _Pending(records)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise AuditQueueFull("the audit write queue is full") from None
        return pending.future

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            size = len(first.records)
            while size < self._max_batch_records:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                size += len(item.records)
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        records = [record for pending in batch for record in pending.records]
        started = time.perf_counter()
        try:
            for record in records:
                _hash_payload(record)
            seqs = self.store.append(records)
        except BaseException as exc:
            if self._on_failure is not None:
                self._on_failure(exc)
            for pending in batch:
                pending.future.set_exception(exc)
            return
        if self._on_commit is not None:
            self._on_commit(len(records), time.perf_counter() - started)
        offset = 0
        for pending in batch:
            pending.future.set_result(seqs[offset : offset + len(pending.records)])
            offset += len(pending.records)


def _hash_payload(record: dict[str, Any]) -> None:
    """Replace the uploaded bytes by their sha256 and size (hashing here keeps it off the
    event loop; hashlib releases the GIL on large buffers). The bytes are never stored."""
    payload = record.pop("payload", None)
    if payload is not None:
        record["sha256"] = hashlib.sha256(payload).hexdigest()
        record["byte_size"] = len(payload)
