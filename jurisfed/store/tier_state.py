"""A tier's durable round state in one SQLite file: rounds, participants, silos, checkpoints.

The global aggregator and each regional keep one of these (WAL journal, synchronous=FULL, via
store/sqlite.py): every method is one transaction, so after a SIGKILL or a power cut a write
is either wholly visible or not at all, and a call that returned is on disk.

What it holds:
  rounds        number, state, contract SHA-256 and signature, base model, opened/closed times,
                deadline, reason, model
  participants  per round: each accepted contribution (participant, idempotency key, content
                SHA-256 naming its blob, example count, cohort size, bytes, tensors withheld) and
                each refused one (reason code, detail)
  silos         the registry: example count, schema hash, code version, last synced round
  left_out      per round: silos excluded before it and participants that dropped out, by code
                (these two through `TierState.registry`, a SiloRegistry: silo_registry.py)
  plans         the round plans run, and which rounds each covers (`TierState.plans`: plans.py)
  checks        per round: the acceptance gates and metrics measured at its close
                (`TierState.checks`: checks.py)
  checkpoints   version -> blob SHA-256 (blobs.py), parent version, committing round; append-only
  head          the committed checkpoint the next round starts from; `rollback` moves it

Round life: open -> closing -> committed | aborted | gate_failed (open may also end directly);
a committed round becomes rolled_back when a rollback leaves its checkpoint off the head's
lineage, and committed again if a later rollback brings it back. At most one round is open or
closing at a time, and round numbers only grow, so an idempotency key is never reused.

Crash semantics the tiers rely on: put an update's bytes in the blob store, then
`record_contribution`, then fold it in memory. A restarted tier calls `resume()` and gets the
round that was in flight with every contribution recorded for it, so it can fold them again
from their blobs (nothing lost) while retries with the same key are answered as duplicates
(nothing counted twice) — or close the round as aborted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from jurisfed.errors import InvalidInput, WrongState
from jurisfed.store.checks import RoundChecks
from jurisfed.store.plans import PlanBook
from jurisfed.store.round_records import (
    CHECKPOINT_COLUMNS,
    CONTRIBUTION_COLUMNS,
    OUTCOMES,
    REFUSAL_COLUMNS,
    ROUND_COLUMNS,
    CheckpointRecord,
    ContributionRecord,
    NewCheckpoint,
    Recorded,
    RefusedContribution,
    Resumption,
    RollbackRecord,
    RoundRecord,
    RoundStatus,
    StateUnavailable,
    check_sha256,
    checkpoint_of,
    checkpoint_or_none,
    checkpoint_record,
    contribution_of,
    contributions_of_round,
    head_record,
    in_flight_round,
    lineage_of,
    round_of,
    round_or_none,
    round_record,
    set_head,
    utc,
)
from jurisfed.store.silo_registry import SiloRegistry
from jurisfed.store.sqlite import SqliteStore

__all__ = [
    "CheckpointRecord",
    "ContributionRecord",
    "NewCheckpoint",
    "Recorded",
    "RefusedContribution",
    "Resumption",
    "RollbackRecord",
    "RoundRecord",
    "RoundStatus",
    "StateUnavailable",
    "TierState",
]

SCHEMA_VERSION = 1
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rounds (
        number INTEGER PRIMARY KEY CHECK (number >= 1),
        state TEXT NOT NULL CHECK (state IN
            ('open', 'closing', 'committed', 'aborted', 'gate_failed', 'rolled_back')),
        contract_sha256 TEXT NOT NULL,
        base_sha256 TEXT NOT NULL,
        opened_at REAL NOT NULL,
        closed_at REAL,
        reason TEXT NOT NULL DEFAULT '',
        model_sha256 TEXT NOT NULL DEFAULT '',
        deadline_at REAL,
        contract_signature TEXT NOT NULL DEFAULT '')""",
    """CREATE UNIQUE INDEX IF NOT EXISTS rounds_one_in_flight
        ON rounds ((0)) WHERE state IN ('open', 'closing')""",
    """CREATE TABLE IF NOT EXISTS participants (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        round INTEGER NOT NULL,
        participant TEXT NOT NULL CHECK (length(participant) > 0),
        idempotency_key TEXT NOT NULL,
        content_sha256 TEXT NOT NULL,
        example_count INTEGER NOT NULL,
        cohort_size INTEGER NOT NULL DEFAULT 1,
        bytes_received INTEGER NOT NULL DEFAULT 0,
        float32_bytes INTEGER NOT NULL DEFAULT 0,
        withheld TEXT NOT NULL DEFAULT '[]',
        outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused')),
        reason_code TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        recorded_at REAL NOT NULL)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS participants_one_contribution
        ON participants (round, participant) WHERE outcome = 'accepted'""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        version INTEGER PRIMARY KEY CHECK (version >= 0),
        blob_sha256 TEXT NOT NULL,
        architecture TEXT NOT NULL,
        parent_version INTEGER,
        committed_round INTEGER,
        committed_at REAL NOT NULL)""",
    """CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'the checkpoint index is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'the checkpoint index is append-only'); END""",
    "CREATE TABLE IF NOT EXISTS head (only INTEGER PRIMARY KEY CHECK (only = 1), version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS rollbacks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        from_version INTEGER,
        to_version INTEGER NOT NULL,
        reason TEXT NOT NULL,
        rolled_back_at REAL NOT NULL)""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class TierState(SqliteStore):
    WHAT = "tier state"
    UNAVAILABLE = StateUnavailable
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0
    ) -> None:
        super().__init__(path, clock=clock, busy_timeout_s=busy_timeout_s)
        self.registry = SiloRegistry(path, clock=clock, busy_timeout_s=busy_timeout_s)
        self.plans = PlanBook(path, clock=clock, busy_timeout_s=busy_timeout_s)
        self.checks = RoundChecks(path, clock=clock, busy_timeout_s=busy_timeout_s)

    # --- rounds ------------------------------------------------------------------------------

    def open_round(
        self,
        number: int,
        contract_sha256: str,
        base_sha256: str,
        *,
        duration_s: float | None = None,
        contract_signature: bytes = b"",
    ) -> RoundRecord:
        """Open round `number` under the contract with that hash, starting from `base_sha256`;
        `duration_s`: how long this tier keeps it open (recorded as `deadline_at`, so a
        restarted tier closes it on time); `contract_signature`: the signature it was issued with.

        Opening the round that is already open under the same contract returns it unchanged (a
        restarted tier re-opening); any other round in flight, or a number not above every
        earlier round, is WrongState.
        """
        if duration_s is not None and not 0.0 <= duration_s < float("inf"):
            raise InvalidInput(
                f"a round's duration must be a non-negative number of seconds, got {duration_s}"
            )
        check_sha256("contract", contract_sha256)
        check_sha256("base model", base_sha256)
        with self._transaction(write=True) as db:
            existing = round_or_none(db, number)
            if existing is not None:
                same = (existing.contract_sha256, existing.base_sha256) == (contract_sha256, base_sha256)
                if existing.state is RoundStatus.OPEN and same:
                    return existing
                raise WrongState(
                    f"round {number} was already opened (it is {existing.state}) under contract "
                    f"{existing.contract_sha256[:12]}; round numbers are never reused"
                )
            in_flight = in_flight_round(db)
            if in_flight is not None:
                raise WrongState(f"round {in_flight.number} is still {in_flight.state}; close it first")
            latest = db.execute("SELECT max(number) FROM rounds").fetchone()[0]
            if latest is not None and number <= latest:
                raise WrongState(f"round {number} is not after round {latest}; round numbers only grow")
            now = self._clock()
            db.execute(
                "INSERT INTO rounds (number, state, contract_sha256, base_sha256, opened_at, deadline_at, "
                "contract_signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    number,
                    RoundStatus.OPEN.value,
                    contract_sha256,
                    base_sha256,
                    now,
                    None if duration_s is None else now + duration_s,
                    contract_signature.hex(),
                ),
            )
            return round_record(db, number)

    def begin_closing(self, number: int) -> RoundRecord:
        """Stop taking contributions to `number` (quorum or deadline reached) before deciding it."""
        with self._transaction(write=True) as db:
            record = round_record(db, number)
            if record.state is RoundStatus.CLOSING:
                return record
            if record.state is not RoundStatus.OPEN:
                raise WrongState(f"round {number} is {record.state}, not open")
            db.execute("UPDATE rounds SET state = ? WHERE number = ?", (RoundStatus.CLOSING.value, number))
            return round_record(db, number)

    def close_round(
        self, number: int, outcome: RoundStatus, reason: str, *, checkpoint: NewCheckpoint | None = None
    ) -> RoundRecord:
        """End round `number` as committed (with the checkpoint it produced), aborted or gate_failed.

        A commit adds checkpoint `number` (its parent: the head) and moves the head to it, in the
        same transaction as the round's state. Closing again with the same outcome and model
        returns the record unchanged; any other change to a closed round is WrongState.
        """
        if outcome not in OUTCOMES:
            raise InvalidInput(f"a round ends committed, aborted or gate_failed, not {outcome}")
        if (outcome is RoundStatus.COMMITTED) != (checkpoint is not None):
            raise InvalidInput("a committed round needs its checkpoint, and only a committed round has one")
        if checkpoint is not None:
            check_sha256("checkpoint blob", checkpoint.blob_sha256)
            if not checkpoint.architecture:
                raise InvalidInput("a checkpoint must name its architecture")
        with self._transaction(write=True) as db:
            record = round_record(db, number)
            if not record.state.in_flight:
                model = checkpoint.blob_sha256 if checkpoint is not None else record.model_sha256
                if record.state is outcome and record.model_sha256 == model:
                    return record
                raise WrongState(f"round {number} is already {record.state}")
            head = head_record(db)
            model_sha256 = head.blob_sha256 if head is not None else record.base_sha256
            if checkpoint is not None:
                db.execute(
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        number,
                        checkpoint.blob_sha256,
                        checkpoint.architecture,
                        head.version if head is not None else None,
                        number,
                        self._clock(),
                    ),
                )
                set_head(db, number)
                model_sha256 = checkpoint.blob_sha256
            db.execute(
                "UPDATE rounds SET state = ?, closed_at = ?, reason = ?, model_sha256 = ? WHERE number = ?",
                (outcome.value, self._clock(), reason, model_sha256, number),
            )
            return round_record(db, number)

    def round(self, number: int) -> RoundRecord:
        with self._transaction(write=False) as db:
            return round_record(db, number)

    def rounds(self) -> list[RoundRecord]:
        with self._transaction(write=False) as db:
            return [round_of(row) for row in db.execute(ROUND_COLUMNS + "ORDER BY number")]

    def resume(self) -> Resumption:
        with self._transaction(write=False) as db:
            in_flight = in_flight_round(db)
            contributions: tuple[ContributionRecord, ...] = ()
            if in_flight is not None:
                contributions = tuple(contributions_of_round(db, in_flight.number))
            head = head_record(db)
            latest = db.execute("SELECT max(number) FROM rounds").fetchone()[0] or 0
            return Resumption(head, in_flight, contributions, max(latest, head.version if head else 0) + 1)

    # --- participants ----------------------------------------------------------------------------

    def record_contribution(
        self,
        round_number: int,
        participant: str,
        idempotency_key: str,
        content_sha256: str,
        example_count: int,
        *,
        cohort_size: int = 1,
        bytes_received: int = 0,
        float32_bytes: int = 0,
        withheld: tuple[str, ...] = (),
    ) -> Recorded:
        """Record one accepted contribution to the open round; the same key again is not new.

        `content_sha256` names the blob holding what was contributed; `withheld` the tensors the
        sender left out of it (needed to fold it again after a restart); cohort size and bytes
        are kept for reports. WrongState if the round is not open, or the participant already
        contributed under another key; InvalidInput if the same key comes with different content.
        """
        if cohort_size < 1 or bytes_received < 0 or float32_bytes < 0:
            raise InvalidInput(
                f"a contribution needs a cohort of at least one and byte counts not below zero, "
                f"{participant} gave {cohort_size}, {bytes_received}, {float32_bytes}"
            )
        check_sha256("content", content_sha256)
        if not participant or not idempotency_key:
            raise InvalidInput("a contribution needs a participant and an idempotency key")
        if example_count < 1:
            raise InvalidInput(
                f"a contribution needs at least one example, {participant} claimed {example_count}"
            )
        with self._transaction(write=True) as db:
            record = round_or_none(db, round_number)
            if record is None or record.state is not RoundStatus.OPEN:
                state = "never opened" if record is None else record.state
                raise WrongState(f"round {round_number} is {state}: it takes no contributions")
            row = db.execute(
                CONTRIBUTION_COLUMNS + "AND round = ? AND participant = ?", (round_number, participant)
            ).fetchone()
            if row is not None:
                earlier = contribution_of(row)
                if earlier.idempotency_key != idempotency_key:
                    raise WrongState(f"{participant} already contributed to round {round_number}")
                if (earlier.content_sha256, earlier.example_count) != (content_sha256, example_count):
                    raise InvalidInput(
                        f"{participant} reused idempotency key {idempotency_key!r} of round {round_number} "
                        "for different content"
                    )
                return Recorded(new=False, contribution=earlier)
            db.execute(
                "INSERT INTO participants (round, participant, idempotency_key, content_sha256, "
                "example_count, cohort_size, bytes_received, float32_bytes, withheld, outcome, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'accepted', ?)",
                (
                    round_number,
                    participant,
                    idempotency_key,
                    content_sha256,
                    example_count,
                    cohort_size,
                    bytes_received,
                    float32_bytes,
                    json.dumps(list(withheld)),
                    self._clock(),
                ),
            )
            row = db.execute(
                CONTRIBUTION_COLUMNS + "AND round = ? AND participant = ?", (round_number, participant)
            ).fetchone()
            return Recorded(new=True, contribution=contribution_of(row))

    def record_refusal(
        self, round_number: int, participant: str, code: str, detail: str
    ) -> RefusedContribution:
        """Record a refused contribution (e.g. code FAILED_PRECONDITION for a late update)."""
        if not participant or not _CODE.fullmatch(code):
            raise InvalidInput(
                f"a refusal needs a participant and a reason code such as 'late', not {code!r}"
            )
        now = self._clock()
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT INTO participants (round, participant, idempotency_key, content_sha256, "
                "example_count, outcome, reason_code, detail, recorded_at) "
                "VALUES (?, ?, '', '', 0, 'refused', ?, ?, ?)",
                (round_number, participant, code, detail, now),
            )
        return RefusedContribution(round_number, participant, code, detail, utc(now))

    def contributions(self, round_number: int) -> list[ContributionRecord]:
        with self._transaction(write=False) as db:
            return contributions_of_round(db, round_number)

    def refusals(self, round_number: int) -> list[RefusedContribution]:
        with self._transaction(write=False) as db:
            rows = db.execute(REFUSAL_COLUMNS + "AND round = ? ORDER BY id", (round_number,))
            return [RefusedContribution(r, p, code, detail, utc(at)) for r, p, code, detail, at in rows]

    # --- checkpoints and rollback --------------------------------------------------------------

    def record_initial_checkpoint(self, blob_sha256: str, architecture: str) -> CheckpointRecord:
        """Checkpoint 0, the model before any round, made the head if there is none yet.

        Recording the same model again returns it; another model is WrongState.
        """
        check_sha256("checkpoint blob", blob_sha256)
        with self._transaction(write=True) as db:
            existing = checkpoint_or_none(db, 0)
            if existing is not None:
                if (existing.blob_sha256, existing.architecture) != (blob_sha256, architecture):
                    raise WrongState(
                        f"checkpoint 0 is already {existing.blob_sha256} ({existing.architecture})"
                    )
                return existing
            db.execute(
                "INSERT INTO checkpoints VALUES (0, ?, ?, NULL, NULL, ?)",
                (blob_sha256, architecture, self._clock()),
            )
            if head_record(db) is None:
                set_head(db, 0)
            return checkpoint_record(db, 0)

    def head(self) -> CheckpointRecord | None:
        """The committed checkpoint the next round starts from; None before any."""
        with self._transaction(write=False) as db:
            return head_record(db)

    def checkpoint(self, version: int) -> CheckpointRecord:
        with self._transaction(write=False) as db:
            return checkpoint_record(db, version)

    def checkpoints(self) -> list[CheckpointRecord]:
        with self._transaction(write=False) as db:
            return [checkpoint_of(row) for row in db.execute(CHECKPOINT_COLUMNS + "ORDER BY version")]

    def rollback(self, to_version: int, reason: str) -> CheckpointRecord:
        """Make checkpoint `to_version` the head; return it (its blob holds the exact bytes).

        Refused (WrongState) while a round is in flight. Rounds whose checkpoints leave the head's
        lineage become rolled_back; rounds whose checkpoints return to it, committed again. Load
        and check the blob before calling this, so the head never names a model you cannot read.
        """
        if not reason:
            raise InvalidInput("a rollback must say why")
        with self._transaction(write=True) as db:
            target = checkpoint_record(db, to_version)
            in_flight = in_flight_round(db)
            if in_flight is not None:
                raise WrongState(
                    f"round {in_flight.number} is {in_flight.state}; abort it before rolling back"
                )
            previous = head_record(db)
            lineage = lineage_of(db, to_version)
            for number, state in db.execute(
                "SELECT number, state FROM rounds WHERE state IN ('committed', 'rolled_back')"
            ).fetchall():
                wanted = RoundStatus.COMMITTED if number in lineage else RoundStatus.ROLLED_BACK
                if state != wanted.value:
                    db.execute("UPDATE rounds SET state = ? WHERE number = ?", (wanted.value, number))
            set_head(db, to_version)
            db.execute(
                "INSERT INTO rollbacks (from_version, to_version, reason, rolled_back_at) "
                "VALUES (?, ?, ?, ?)",
                (previous.version if previous is not None else None, to_version, reason, self._clock()),
            )
            return target

    def rollbacks(self) -> list[RollbackRecord]:
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT from_version, to_version, reason, rolled_back_at FROM rollbacks ORDER BY id"
            )
            return [RollbackRecord(old, new, reason, utc(at)) for old, new, reason, at in rows]
