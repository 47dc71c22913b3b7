"""The privacy ledger: every DP release of every jurisdiction, durable, append-only, in SQLite.

One SQLite file (WAL journal, synchronous=FULL, so a committed release survives a crash or a
power cut) holds one row per release: jurisdiction, release id (the idempotency key, e.g.
"round-12"), time, and the dp_accounting event as canonical JSON. Triggers refuse UPDATE
and DELETE, so no code path can hand a jurisdiction its budget back. Epsilon is always
recomputed from the rows (accounting.py), never kept as a running total that could drift.

A regional asks `would_exceed` BEFORE it runs a round and refuses the round when the answer
is yes; when the round releases its aggregate it calls `record_within`, which checks and
records in one write transaction, so two writers (a restarted regional, a retry) can never
both spend the last of a budget. Connections are opened per call, so the ledger may be shared
by threads and by processes; SQLite's lock serializes the writers.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import grpc

from jurisfed.errors import InvalidInput, JurisfedError, WrongState
from jurisfed.privacy.accounting import (
    DEFAULT_DELTA,
    DpEvent,
    epsilon,
    event_from_json,
    event_to_json,
    rdp_curve,
    stored_epsilon,
)
from jurisfed.store.sqlite import SqliteStore

SCHEMA_VERSION = 1
SECONDS_PER_DAY = 86_400.0
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS privacy_releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        jurisdiction TEXT NOT NULL CHECK (length(jurisdiction) > 0),
        release_id TEXT NOT NULL CHECK (length(release_id) > 0),
        released_at REAL NOT NULL,
        event TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        UNIQUE (jurisdiction, release_id))""",
    "CREATE INDEX IF NOT EXISTS privacy_releases_by_time ON privacy_releases (jurisdiction, released_at)",
    """CREATE TRIGGER IF NOT EXISTS privacy_releases_no_update BEFORE UPDATE ON privacy_releases
        BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS privacy_releases_no_delete BEFORE DELETE ON privacy_releases
        BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class LedgerUnavailable(JurisfedError):
    """The ledger file cannot be read or written (locked too long, disk full, corrupt)."""

    status = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Budget:
    """A jurisdiction's cap: at most `cap_epsilon` at `delta` over any `period_days` days."""

    cap_epsilon: float
    delta: float = DEFAULT_DELTA
    period_days: float = 365.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.cap_epsilon) or self.cap_epsilon < 0:
            raise InvalidInput(f"epsilon cap must be a non-negative number, got {self.cap_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise InvalidInput(f"delta must be in (0, 1), got {self.delta}")
        if not math.isfinite(self.period_days) or self.period_days <= 0:
            raise InvalidInput(f"budget period must be a positive number of days, got {self.period_days}")


@dataclass(frozen=True)
class Release:
    jurisdiction: str
    release_id: str
    released_at: datetime
    event: DpEvent
    note: str


@dataclass(frozen=True)
class BudgetCheck:
    """Whether one more release fits a budget, with the figures a refusal must state.

    Truthy when the release WOULD EXCEED the cap, so `if ledger.would_exceed(...)` reads right.
    """

    jurisdiction: str
    budget: Budget
    window_start: datetime
    releases_in_window: int
    epsilon_spent: float  # over the window, before this release
    epsilon_after: float  # over the window, with this release
    recorded: bool = False  # record_within: the release is now in the ledger

    @property
    def exceeds(self) -> bool:
        return not self.epsilon_after <= self.budget.cap_epsilon  # NaN exceeds, too

    @property
    def epsilon_remaining(self) -> float:
        return max(0.0, self.budget.cap_epsilon - self.epsilon_spent)

    def __bool__(self) -> bool:
        return self.exceeds

    @property
    def reason(self) -> str:
        figures = (
            f"epsilon (delta={self.budget.delta:g}) of {self.jurisdiction} over the last "
            f"{self.budget.period_days:g} days: {self.epsilon_spent:.4g} spent in "
            f"{self.releases_in_window} release(s), {self.epsilon_after:.4g} with this one"
        )
        if self.exceeds:
            return f"refused: privacy budget cap {self.budget.cap_epsilon:g} would be exceeded; {figures}"
        return f"within privacy budget cap {self.budget.cap_epsilon:g}; {figures}"


class PrivacyLedger(SqliteStore):
    WHAT = "privacy ledger"
    UNAVAILABLE = LedgerUnavailable
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = SCHEMA_VERSION

    # --- writing ---------------------------------------------------------------------------

    def record(self, jurisdiction: str, release_id: str, event: DpEvent, *, note: str = "") -> Release:
        """Record a release unconditionally; recording the same id and event again is a no-op."""
        event_json = _checked(jurisdiction, release_id, event)
        with self._transaction(write=True) as db:
            return self._insert(db, jurisdiction, release_id, event_json, note)

    def record_within(
        self, jurisdiction: str, release_id: str, event: DpEvent, budget: Budget, *, note: str = ""
    ) -> BudgetCheck:
        """Record the release only if it fits `budget`, checking and writing atomically."""
        event_json = _checked(jurisdiction, release_id, event)
        with self._transaction(write=True) as db:
            existing = _find(db, jurisdiction, release_id)
            if existing is not None:
                self._insert(db, jurisdiction, release_id, event_json, note)  # same event, or WrongState
                return self._check(db, jurisdiction, None, budget, recorded=True)
            check = self._check(db, jurisdiction, event_json, budget)
            if check.exceeds:
                return check
            self._insert(db, jurisdiction, release_id, event_json, note)
            return replace(check, recorded=True)

    # --- reading ---------------------------------------------------------------------------

    def would_exceed(
        self, jurisdiction: str, event: DpEvent, cap_epsilon: float, delta: float, period_days: float
    ) -> BudgetCheck:
        """Whether one more `event` would take the last `period_days` days above `cap_epsilon`."""
        budget = Budget(cap_epsilon, delta, period_days)
        event_json = _checked(jurisdiction, "-", event)
        with self._transaction(write=False) as db:
            return self._check(db, jurisdiction, event_json, budget)

    def spent(
        self, jurisdiction: str, since: datetime | None = None, *, delta: float = DEFAULT_DELTA
    ) -> float:
        """Epsilon at `delta` of the jurisdiction's releases since `since` (default: ever)."""
        return epsilon((r.event for r in self.releases(jurisdiction, since)), delta)

    def releases(self, jurisdiction: str, since: datetime | None = None) -> list[Release]:
        """The jurisdiction's releases, oldest first."""
        after = -math.inf if since is None else _timestamp(since)
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT jurisdiction, release_id, released_at, event, note FROM privacy_releases "
                "WHERE jurisdiction = ? AND released_at >= ? ORDER BY id",
                (jurisdiction, after),
            ).fetchall()
        return [_release(row) for row in rows]

    def jurisdictions(self) -> list[str]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT DISTINCT jurisdiction FROM privacy_releases ORDER BY jurisdiction")
            return [row[0] for row in rows]

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- internals -------------------------------------------------------------------------

    def _check(
        self,
        db: sqlite3.Connection,
        jurisdiction: str,
        event_json: str | None,
        budget: Budget,
        *,
        recorded: bool = False,
    ) -> BudgetCheck:
        start = self._clock() - budget.period_days * SECONDS_PER_DAY
        rows = db.execute(
            "SELECT event FROM privacy_releases WHERE jurisdiction = ? AND released_at > ? ORDER BY id",
            (jurisdiction, start),
        ).fetchall()
        history = [row[0] for row in rows]
        after = history + ([event_json] if event_json is not None else [])
        return BudgetCheck(
            jurisdiction=jurisdiction,
            budget=budget,
            window_start=datetime.fromtimestamp(start, UTC),
            releases_in_window=len(history),
            epsilon_spent=stored_epsilon(history, budget.delta),
            epsilon_after=stored_epsilon(after, budget.delta),
            recorded=recorded,
        )

    def _insert(
        self, db: sqlite3.Connection, jurisdiction: str, release_id: str, event_json: str, note: str
    ) -> Release:
        existing = _find(db, jurisdiction, release_id)
        if existing is not None:
            if existing[3] != event_json:
                raise WrongState(
                    f"release {release_id!r} of {jurisdiction} is already recorded with another event "
                    f"({existing[3]}); a release id is recorded once"
                )
            return _release(existing)
        db.execute(
            "INSERT INTO privacy_releases (jurisdiction, release_id, released_at, event, note) "
            "VALUES (?, ?, ?, ?, ?)",
            (jurisdiction, release_id, self._clock(), event_json, note),
        )
        row = _find(db, jurisdiction, release_id)
        assert row is not None
        return _release(row)


def _checked(jurisdiction: str, release_id: str, event: DpEvent) -> str:
    if not jurisdiction or not release_id:
        raise InvalidInput("a privacy release needs a jurisdiction and a release id")
    event_json = event_to_json(event)
    rdp_curve(event_json)  # refuses events the accountant cannot account for
    return event_json


def _find(
    db: sqlite3.Connection, jurisdiction: str, release_id: str
) -> tuple[str, str, float, str, str] | None:
    row: tuple[str, str, float, str, str] | None = db.execute(
        "SELECT jurisdiction, release_id, released_at, event, note FROM privacy_releases "
        "WHERE jurisdiction = ? AND release_id = ?",
        (jurisdiction, release_id),
    ).fetchone()
    return row


def _release(row: tuple[str, str, float, str, str]) -> Release:
    jurisdiction, release_id, released_at, event_json, note = row
    return Release(
        jurisdiction, release_id, datetime.fromtimestamp(released_at, UTC), event_from_json(event_json), note
    )


def _timestamp(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise InvalidInput(f"time {moment} has no time zone; give it in UTC")
    return moment.timestamp()
