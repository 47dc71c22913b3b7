"""Tamper-evident audit log: events, Merkle-hashed and signed records, witnesses, evidence bundles.

Tiers record through `AuditSink.record(event)`; `AuditLog` is the file-backed sink, and
`jurisfed audit verify|export` check a log offline and turn part of it into evidence.
See docs/audit.md for what the log proves and how to check it.
"""

from jurisfed.audit.events import AuditEvent, AuditRecord, Decision, Detail, EventKind
from jurisfed.audit.log import AuditLog, WitnessUpdate
from jurisfed.audit.sink import AuditSink, MemoryAuditSink

__all__ = [
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "AuditSink",
    "Decision",
    "Detail",
    "EventKind",
    "MemoryAuditSink",
    "WitnessUpdate",
]
