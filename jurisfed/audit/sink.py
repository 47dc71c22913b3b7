"""The seam the tiers call: `AuditSink.record(event)`, and an in-memory twin for tests."""

from __future__ import annotations

import datetime
import threading
from typing import Protocol

from jurisfed.audit.events import GENESIS, AuditEvent, AuditRecord


class AuditSink(Protocol):
    """Where a tier records what it decided. Thread-safe; returns once the record is durable.

    Record *before* acknowledging what the event describes (before answering the peer,
    committing the checkpoint, sending the aggregate): if `record` raises, do not proceed.
    """

    def record(self, event: AuditEvent) -> AuditRecord: ...


class MemoryAuditSink:
    """An `AuditSink` that keeps records in memory, numbered and chained like the real log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[AuditRecord] = []

    def record(self, event: AuditEvent) -> AuditRecord:
        with self._lock:
            previous = self._records[-1].leaf_hash().hex() if self._records else GENESIS
            sealed = AuditRecord.seal(
                len(self._records), datetime.datetime.now(datetime.UTC), previous, event
            )
            self._records.append(sealed)
            return sealed

    @property
    def records(self) -> list[AuditRecord]:
        with self._lock:
            return list(self._records)

    def events(self) -> list[AuditEvent]:
        return [record.event for record in self.records]
