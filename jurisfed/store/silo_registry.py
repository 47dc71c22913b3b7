"""The silo registry and the per-round record of who was left out, in a tier's state file.

Lives in the same SQLite file as the round state (tier_state.py; WAL, synchronous=FULL), in
tables of its own: `silos` (id, example count, schema hash, code version, last synced round)
and `left_out` (per round: silos excluded before it and participants that dropped out of it,
each with a reason code from jurisfed.eligibility and a sentence). A regional registers its
silos here; the global may register its jurisdictions the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from jurisfed.eligibility import DropoutReason, ExclusionReason
from jurisfed.errors import InvalidInput, NotFound
from jurisfed.store.round_records import StateUnavailable, utc
from jurisfed.store.sqlite import SqliteStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS silos (
        silo_id TEXT PRIMARY KEY CHECK (length(silo_id) > 0),
        example_count INTEGER NOT NULL,
        schema_sha256 TEXT NOT NULL,
        code_version TEXT NOT NULL,
        last_synced_round INTEGER,
        registered_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS left_out (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        round INTEGER NOT NULL,
        participant TEXT NOT NULL CHECK (length(participant) > 0),
        kind TEXT NOT NULL CHECK (kind IN ('excluded', 'dropout')),
        reason_code TEXT NOT NULL,
        detail TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        UNIQUE (round, participant, kind))""",
)
_SILO = (
    "SELECT silo_id, example_count, schema_sha256, code_version, last_synced_round, registered_at FROM silos "
)
_LEFT_OUT = "SELECT round, participant, kind, reason_code, detail, recorded_at FROM left_out "


@dataclass(frozen=True)
class SiloRecord:
    silo_id: str
    example_count: int
    schema_sha256: str
    code_version: str
    last_synced_round: int | None  # None: it never fetched a model
    registered_at: datetime


@dataclass(frozen=True)
class LeftOut:
    round: int
    participant: str
    reason: ExclusionReason | DropoutReason
    detail: str
    recorded_at: datetime

    @property
    def dropout(self) -> bool:
        return isinstance(self.reason, DropoutReason)


class SiloRegistry(SqliteStore):
    WHAT = "silo registry"
    UNAVAILABLE = StateUnavailable
    SCHEMA = _SCHEMA

    def register_silo(
        self, silo_id: str, example_count: int, schema_sha256: str, code_version: str
    ) -> SiloRecord:
        """Add or update a silo's registration; its last synced round is kept."""
        if not silo_id or example_count < 0:
            raise InvalidInput(
                f"silo {silo_id!r}: a registration needs an id and a non-negative example count"
            )
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT INTO silos (silo_id, example_count, schema_sha256, code_version, registered_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (silo_id) DO UPDATE SET "
                "example_count = excluded.example_count, "
                "schema_sha256 = excluded.schema_sha256, code_version = excluded.code_version, "
                "registered_at = excluded.registered_at",
                (silo_id, example_count, schema_sha256, code_version, self._clock()),
            )
            return _silo_of(db.execute(_SILO + "WHERE silo_id = ?", (silo_id,)).fetchone())

    def forget_silo(self, silo_id: str) -> bool:
        """Remove a registration (its records of past rounds stay); True if there was one."""
        with self._transaction(write=True) as db:
            return db.execute("DELETE FROM silos WHERE silo_id = ?", (silo_id,)).rowcount == 1

    def mark_synced(self, silo_id: str, round_number: int) -> SiloRecord:
        """Record that the silo fetched the model of `round_number` (never moves backwards)."""
        with self._transaction(write=True) as db:
            updated = db.execute(
                "UPDATE silos SET last_synced_round = max(coalesce(last_synced_round, ?), ?) "
                "WHERE silo_id = ?",
                (round_number, round_number, silo_id),
            )
            if updated.rowcount == 0:
                raise NotFound(f"silo {silo_id} is not registered")
            return _silo_of(db.execute(_SILO + "WHERE silo_id = ?", (silo_id,)).fetchone())

    def silo(self, silo_id: str) -> SiloRecord | None:
        with self._transaction(write=False) as db:
            row = db.execute(_SILO + "WHERE silo_id = ?", (silo_id,)).fetchone()
            return None if row is None else _silo_of(row)

    def silos(self) -> list[SiloRecord]:
        with self._transaction(write=False) as db:
            return [_silo_of(row) for row in db.execute(_SILO + "ORDER BY silo_id")]

    def record_left_out(
        self, round_number: int, participant: str, reason: ExclusionReason | DropoutReason, detail: str
    ) -> bool:
        """Record that `participant` was excluded from, or dropped out of, a round; True if new.

        One record per participant, round and kind (exclusion or dropout); repeats are ignored.
        """
        if not participant:
            raise InvalidInput("an exclusion or dropout must name the participant")
        kind = "dropout" if isinstance(reason, DropoutReason) else "excluded"
        with self._transaction(write=True) as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO left_out (round, participant, kind, reason_code, detail, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (round_number, participant, kind, reason.value, detail, self._clock()),
            )
            return inserted.rowcount == 1

    def left_out(self, round_number: int) -> list[LeftOut]:
        with self._transaction(write=False) as db:
            rows = db.execute(_LEFT_OUT + "WHERE round = ? ORDER BY id", (round_number,))
            return [_left_out(row) for row in rows]

    def left_out_counts(self, round_number: int) -> Counter[ExclusionReason | DropoutReason]:
        """Exclusions and dropouts of a round, per reason code (what `round status` shows)."""
        return Counter(entry.reason for entry in self.left_out(round_number))


def _silo_of(row: tuple[str, int, str, str, int | None, float]) -> SiloRecord:
    silo_id, examples, schema, code, synced, at = row
    return SiloRecord(silo_id, examples, schema, code, synced, utc(at))


def _left_out(row: tuple[int, str, str, str, str, float]) -> LeftOut:
    round_number, participant, kind, code, detail, at = row
    reason = DropoutReason(code) if kind == "dropout" else ExclusionReason(code)
    return LeftOut(round_number, participant, reason, detail, utc(at))
