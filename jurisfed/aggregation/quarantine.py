"""Quarantined participants: who, since when, why, and who re-admitted them when.

A participant (a silo at a regional, a jurisdiction at the global) whose update was an
outlier is quarantined with the reason and score of its diagnosis; its updates are refused
until an operator re-admits it, naming themselves. Entries are kept for good: the history
counts quarantines, re-admissions and the time each took to remedy. The registry lives in
the tier's state SQLite file (the same file as the privacy ledger: WAL, synchronous=FULL),
in its own table; at most one open quarantine per participant, enforced by the database.
"""

from __future__ import annotations

import sqlite3
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from jurisfed.errors import InvalidInput, JurisfedError, NotFound
from jurisfed.store.sqlite import SqliteStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        participant TEXT NOT NULL CHECK (length(participant) > 0),
        round INTEGER NOT NULL,
        reason TEXT NOT NULL,
        score REAL NOT NULL,
        quarantined_at REAL NOT NULL,
        readmitted_at REAL,
        readmitted_by TEXT,
        readmission_note TEXT NOT NULL DEFAULT '')""",
    """CREATE UNIQUE INDEX IF NOT EXISTS quarantine_one_open_per_participant
        ON quarantine (participant) WHERE readmitted_at IS NULL""",
    # Re-admissions the tier has audited (an operator's command writes only the registry).
    """CREATE TABLE IF NOT EXISTS quarantine_readmission_reported (
        entry INTEGER PRIMARY KEY REFERENCES quarantine (id))""",
)
_SELECT = (
    "SELECT id, participant, round, reason, score, quarantined_at, readmitted_at, readmitted_by, "
    "readmission_note FROM quarantine "
)
_BY_ID = _SELECT + "WHERE id = ?"
_OPEN = _SELECT + "WHERE participant = ? AND readmitted_at IS NULL"
_ALL_OPEN = _SELECT + "WHERE readmitted_at IS NULL ORDER BY id"
_ALL = _SELECT + "ORDER BY id"
_OF_PARTICIPANT = _SELECT + "WHERE participant = ? ORDER BY id"
_REPORTED = "SELECT entry FROM quarantine_readmission_reported"
_UNREPORTED = _SELECT + f"WHERE readmitted_at IS NOT NULL AND id NOT IN ({_REPORTED}) ORDER BY id"
_INSERT = "INSERT INTO quarantine (participant, round, reason, score, quarantined_at) VALUES (?, ?, ?, ?, ?)"
_READMIT = "UPDATE quarantine SET readmitted_at = ?, readmitted_by = ?, readmission_note = ? WHERE id = ?"


class RegistryUnavailable(JurisfedError):
    """The quarantine registry's file cannot be read or written."""

    status = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class QuarantineEntry:
    id: int
    participant: str
    round: int
    reason: str
    score: float
    quarantined_at: datetime
    readmitted_at: datetime | None
    readmitted_by: str | None
    readmission_note: str

    @property
    def active(self) -> bool:
        return self.readmitted_at is None

    @property
    def time_to_remediation_s(self) -> float | None:
        if self.readmitted_at is None:
            return None
        return (self.readmitted_at - self.quarantined_at).total_seconds()


@dataclass(frozen=True)
class QuarantineCounts:
    quarantined: int  # quarantines ever opened
    readmitted: int
    active: int
    median_time_to_remediation_s: float | None


class QuarantineRegistry(SqliteStore):
    WHAT = "quarantine registry"
    UNAVAILABLE = RegistryUnavailable
    SCHEMA = _SCHEMA

    def quarantine(self, participant: str, round_number: int, reason: str, score: float) -> QuarantineEntry:
        """Quarantine `participant`; if it already is, its open entry is returned unchanged."""
        if not participant or not reason:
            raise InvalidInput("a quarantine needs a participant and a reason")
        with self._transaction(write=True) as db:
            open_entry = _open(db, participant)
            if open_entry is not None:
                return open_entry
            db.execute(_INSERT, (participant, round_number, reason, float(score), self._clock()))
            entry = _open(db, participant)
        assert entry is not None
        return entry

    def readmit(self, participant: str, by: str, note: str = "") -> QuarantineEntry:
        """Close `participant`'s open quarantine; NotFound if it has none."""
        if not by:
            raise InvalidInput("a re-admission must name the operator who made it")
        with self._transaction(write=True) as db:
            entry = _open(db, participant)
            if entry is None:
                raise NotFound(f"{participant} is not quarantined")
            db.execute(_READMIT, (self._clock(), by, note, entry.id))
            row = db.execute(_BY_ID, (entry.id,)).fetchone()
        return _entry(row)

    def is_quarantined(self, participant: str) -> bool:
        return self.open_entry(participant) is not None

    def open_entry(self, participant: str) -> QuarantineEntry | None:
        with self._transaction(write=False) as db:
            return _open(db, participant)

    def active(self) -> list[QuarantineEntry]:
        with self._transaction(write=False) as db:
            rows = db.execute(_ALL_OPEN)
            return [_entry(row) for row in rows]

    def history(self, participant: str | None = None) -> list[QuarantineEntry]:
        with self._transaction(write=False) as db:
            rows = db.execute(_ALL) if participant is None else db.execute(_OF_PARTICIPANT, (participant,))
            return [_entry(row) for row in rows]

    def unreported_readmissions(self) -> list[QuarantineEntry]:
        """Re-admissions not yet marked reported (audited by the tier)."""
        with self._transaction(write=False) as db:
            return [_entry(row) for row in db.execute(_UNREPORTED)]

    def mark_reported(self, entry_id: int) -> bool:
        """Mark a re-admission as audited; False if it already was (another thread got there first)."""
        with self._transaction(write=True) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO quarantine_readmission_reported (entry) VALUES (?)", (entry_id,)
            )
            return cursor.rowcount == 1

    def counts(self) -> QuarantineCounts:
        entries = self.history()
        remedied = [e.time_to_remediation_s for e in entries if e.time_to_remediation_s is not None]
        return QuarantineCounts(
            quarantined=len(entries),
            readmitted=len(remedied),
            active=sum(e.active for e in entries),
            median_time_to_remediation_s=statistics.median(remedied) if remedied else None,
        )


Row = tuple[int, str, int, str, float, float, float | None, str | None, str]


def _open(db: sqlite3.Connection, participant: str) -> QuarantineEntry | None:
    row: Row | None = db.execute(_OPEN, (participant,)).fetchone()
    return None if row is None else _entry(row)


def _entry(row: Row) -> QuarantineEntry:
    entry_id, participant, round_number, reason, score, since, readmitted, by, note = row
    return QuarantineEntry(
        id=entry_id,
        participant=participant,
        round=round_number,
        reason=reason,
        score=score,
        quarantined_at=datetime.fromtimestamp(since, UTC),
        readmitted_at=None if readmitted is None else datetime.fromtimestamp(readmitted, UTC),
        readmitted_by=by,
        readmission_note=note,
    )
