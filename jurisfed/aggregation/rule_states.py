"""The state of a tier's aggregation rule after each round, kept in the tier's state SQLite file.

A rule's state (an adaptive clipping norm, the norms a screen admitted) must outlive the
process, and a round resumed after a crash must start from the very state it started from the
first time, so that folding its recorded contributions again gives the same result. So the
state is kept per rule (its canonical text) and per round: `before(rule, n)` is the state left
by the latest round before `n` that ran under `rule`, and saving a round's state again (a
round closed twice after a crash) replaces it.
"""

from __future__ import annotations

import grpc

from jurisfed.aggregation.process import AggregationFactory, RuleState
from jurisfed.errors import JurisfedError
from jurisfed.store.sqlite import SqliteStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aggregation_rule_state (
        rule TEXT NOT NULL,
        round INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (rule, round))""",
)


class RuleStatesUnavailable(JurisfedError):
    """The tier's state file cannot be read or written."""

    status = grpc.StatusCode.UNAVAILABLE


class RuleStates(SqliteStore):
    WHAT = "aggregation rule state"
    UNAVAILABLE = RuleStatesUnavailable
    SCHEMA = _SCHEMA

    def before(self, rule: AggregationFactory, round_number: int) -> RuleState | None:
        """The state `rule` was left in by the latest earlier round; None if it never ran here."""
        with self._transaction(write=False) as db:
            row = db.execute(
                "SELECT state FROM aggregation_rule_state WHERE rule = ? AND round < ? "
                "ORDER BY round DESC LIMIT 1",
                (str(rule), round_number),
            ).fetchone()
        return None if row is None else RuleState.from_json(row[0])

    def save(self, rule: AggregationFactory, round_number: int, state: RuleState) -> None:
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO aggregation_rule_state (rule, round, state) VALUES (?, ?, ?)",
                (str(rule), round_number, state.to_json()),
            )
