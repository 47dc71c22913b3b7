"""What a tier measured when it closed a round: each acceptance gate and each metric, in its state file.

The global records one row per gate check (name, value, threshold, passed, the sentence that
explains it) and per metric without a threshold (probe accuracy and loss of the candidate,
the norm of its change), so `round history` shows why each round committed or failed its gates
long after the process that decided it is gone. Recording a round's checks again (a global
restarted while closing re-evaluates them) replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jurisfed.errors import InvalidInput
from jurisfed.rounds import CheckResult
from jurisfed.store.round_records import StateUnavailable
from jurisfed.store.sqlite import SqliteStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS checks (
        round INTEGER NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL CHECK (length(name) > 0),
        value REAL,
        threshold REAL,
        passed INTEGER,
        sentence TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (round, position))""",
)


class RoundChecks(SqliteStore):
    WHAT = "round checks"
    UNAVAILABLE = StateUnavailable
    SCHEMA = _SCHEMA

    def record(self, round_number: int, checks: Sequence[CheckResult]) -> None:
        """Keep `checks` as round `round_number`'s, replacing any recorded before (NaN reads back None)."""
        if any(not check.name for check in checks):
            raise InvalidInput("every check needs a name")
        now = self._clock()
        with self._transaction(write=True) as db:
            db.execute("DELETE FROM checks WHERE round = ?", (round_number,))
            db.executemany(
                "INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        round_number,
                        position,
                        check.name,
                        _finite(check.value),
                        _finite(check.threshold),
                        None if check.passed is None else int(check.passed),
                        check.sentence,
                        now,
                    )
                    for position, check in enumerate(checks)
                ],
            )

    def of_round(self, round_number: int) -> list[CheckResult]:
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT name, value, sentence, threshold, passed FROM checks "
                "WHERE round = ? ORDER BY position",
                (round_number,),
            )
            return [
                CheckResult(name, value, sentence, threshold, None if passed is None else bool(passed))
                for name, value, sentence, threshold, passed in rows
            ]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
