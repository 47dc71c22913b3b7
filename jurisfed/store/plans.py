"""The round plans a tier has run, in its state file: which rounds each one covers and how it ended.

The global aggregator runs one plan at a time (`jurisfed round start --plan`, or the plan of its
configuration file on first start). Each plan is kept here with its canonical JSON, the round
number it started at and the number of rounds it asks for, so a global killed mid-plan goes on
with the same plan after a restart, and `round history` can say which plan every round served.
Same file and transactions as tier_state.py (WAL, synchronous=FULL); at most one plan runs.
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from jurisfed.errors import InvalidInput, NotFound, WrongState
from jurisfed.store.round_records import StateUnavailable, utc
from jurisfed.store.sqlite import SqliteStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS plans (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL CHECK (length(name) > 0),
        document TEXT NOT NULL,
        first_round INTEGER NOT NULL CHECK (first_round >= 1),
        rounds INTEGER NOT NULL CHECK (rounds >= 1),
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'aborted')),
        started_at REAL NOT NULL,
        ended_at REAL,
        reason TEXT NOT NULL DEFAULT '')""",
    "CREATE UNIQUE INDEX IF NOT EXISTS plans_one_running ON plans ((0)) WHERE status = 'running'",
)
_COLUMNS = "SELECT id, name, document, first_round, rounds, status, started_at, ended_at, reason FROM plans "


class PlanStatus(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"  # every round it asked for was run
    ABORTED = "aborted"  # an operator stopped it


@dataclass(frozen=True)
class PlanRecord:
    id: int
    name: str
    document: str  # the plan as canonical JSON
    first_round: int
    rounds: int
    status: PlanStatus
    started_at: datetime
    ended_at: datetime | None
    reason: str

    @property
    def last_round(self) -> int:
        return self.first_round + self.rounds - 1


class PlanBook(SqliteStore):
    WHAT = "round plans"
    UNAVAILABLE = StateUnavailable
    SCHEMA = _SCHEMA

    def start(self, name: str, document: str, first_round: int, rounds: int) -> PlanRecord:
        """Record that plan `name` runs rounds first_round .. first_round + rounds - 1 from now.

        WrongState while another plan is running: abort it first.
        """
        if not name or first_round < 1 or rounds < 1:
            raise InvalidInput(
                f"a plan needs a name, a first round and rounds, got {name!r} {first_round} {rounds}"
            )
        with self._transaction(write=True) as db:
            running = _running(db)
            if running is not None:
                raise WrongState(
                    f"plan {running.name} is running (rounds {running.first_round}-{running.last_round}); "
                    "abort it first"
                )
            cursor = db.execute(
                "INSERT INTO plans (name, document, first_round, rounds, status, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, document, first_round, rounds, PlanStatus.RUNNING.value, self._clock()),
            )
            return _record(db, int(cursor.lastrowid or 0))

    def end(self, plan_id: int, status: PlanStatus, reason: str) -> PlanRecord:
        """Mark a running plan finished or aborted; ending it again with the same status is a no-op."""
        if status is PlanStatus.RUNNING:
            raise InvalidInput("a plan ends finished or aborted")
        with self._transaction(write=True) as db:
            record = _record(db, plan_id)
            if record.status is status:
                return record
            if record.status is not PlanStatus.RUNNING:
                raise WrongState(f"plan {record.name} already {record.status}")
            db.execute(
                "UPDATE plans SET status = ?, ended_at = ?, reason = ? WHERE id = ?",
                (status.value, self._clock(), reason, plan_id),
            )
            return _record(db, plan_id)

    def running(self) -> PlanRecord | None:
        with self._transaction(write=False) as db:
            return _running(db)

    def plans(self) -> list[PlanRecord]:
        with self._transaction(write=False) as db:
            return [_of(row) for row in db.execute(_COLUMNS + "ORDER BY id")]


Row = tuple[int, str, str, int, int, str, float, float | None, str]


def _running(db: sqlite3.Connection) -> PlanRecord | None:
    row: Row | None = db.execute(_COLUMNS + "WHERE status = 'running'").fetchone()
    return None if row is None else _of(row)


def _record(db: sqlite3.Connection, plan_id: int) -> PlanRecord:
    row: Row | None = db.execute(_COLUMNS + "WHERE id = ?", (plan_id,)).fetchone()
    if row is None:
        raise NotFound(f"no plan {plan_id}")
    return _of(row)


def _of(row: Row) -> PlanRecord:
    plan_id, name, document, first_round, rounds, status, started, ended, reason = row
    return PlanRecord(
        plan_id,
        name,
        document,
        first_round,
        rounds,
        PlanStatus(status),
        utc(started),
        None if ended is None else utc(ended),
        reason,
    )
