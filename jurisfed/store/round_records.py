"""The rows of a tier's round state as frozen records, and the queries that read them.

tier_state.py writes these tables; this module turns their rows into records and is shared
by it and by silo_registry.py. Every function takes a connection already inside a transaction.
"""

from __future__ import annotations

import enum
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from jurisfed.errors import InvalidInput, JurisfedError, NotFound

_SHA256 = re.compile(r"[0-9a-f]{64}")
ROUND_COLUMNS = (
    "SELECT number, state, contract_sha256, base_sha256, opened_at, closed_at, reason, model_sha256, "
    "deadline_at, contract_signature FROM rounds "
)
CONTRIBUTION_COLUMNS = (
    "SELECT round, participant, idempotency_key, content_sha256, example_count, recorded_at, "
    "cohort_size, bytes_received, float32_bytes, withheld FROM participants WHERE outcome = 'accepted' "
)
REFUSAL_COLUMNS = (
    "SELECT round, participant, reason_code, detail, recorded_at FROM participants WHERE outcome = 'refused' "
)
CHECKPOINT_COLUMNS = (
    "SELECT version, blob_sha256, architecture, parent_version, committed_round, committed_at "
    "FROM checkpoints "
)


class StateUnavailable(JurisfedError):
    """The tier's state file cannot be read or written (locked too long, disk full, corrupt)."""

    status = grpc.StatusCode.UNAVAILABLE


class RoundStatus(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    COMMITTED = "committed"
    ABORTED = "aborted"
    GATE_FAILED = "gate_failed"
    ROLLED_BACK = "rolled_back"

    @property
    def in_flight(self) -> bool:
        return self in (RoundStatus.OPEN, RoundStatus.CLOSING)


OUTCOMES = (RoundStatus.COMMITTED, RoundStatus.ABORTED, RoundStatus.GATE_FAILED)


@dataclass(frozen=True)
class RoundRecord:
    number: int
    state: RoundStatus
    contract_sha256: str
    base_sha256: str  # the model the round started from
    opened_at: datetime
    closed_at: datetime | None
    reason: str
    model_sha256: str  # the model after the round: its checkpoint if committed, else the head (or base)
    deadline_at: datetime | None = None  # when the tier closes it at the latest, if it said so
    contract_signature: bytes = b""  # the signature the contract came with


@dataclass(frozen=True)
class ContributionRecord:
    round: int
    participant: str
    idempotency_key: str
    content_sha256: str
    example_count: int
    recorded_at: datetime
    # What arrived, for reports: silos behind it (1 for a silo's own update), bytes on the wire,
    # the same tensors as float32, and the tensors the sender declared withheld.
    cohort_size: int = 1
    bytes_received: int = 0
    float32_bytes: int = 0
    withheld: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recorded:
    """The answer to `record_contribution`; `new` False means a retry of one already recorded."""

    new: bool
    contribution: ContributionRecord


@dataclass(frozen=True)
class RefusedContribution:
    round: int
    participant: str
    code: str
    detail: str
    recorded_at: datetime


@dataclass(frozen=True)
class NewCheckpoint:
    """The model a committing round produced, already stored as a blob."""

    blob_sha256: str
    architecture: str


@dataclass(frozen=True)
class CheckpointRecord:
    version: int
    blob_sha256: str
    architecture: str
    parent_version: int | None
    committed_round: int | None  # None for the initial checkpoint
    committed_at: datetime


@dataclass(frozen=True)
class RollbackRecord:
    from_version: int | None
    to_version: int
    reason: str
    rolled_back_at: datetime


@dataclass(frozen=True)
class Resumption:
    """What a restarted tier finds: where the model stands and the round the crash interrupted."""

    head: CheckpointRecord | None
    in_flight: RoundRecord | None  # open or closing when the tier stopped
    contributions: tuple[ContributionRecord, ...]  # recorded for `in_flight`, in recording order
    next_round: int


RoundRow = tuple[int, str, str, str, float, float | None, str, str, float | None, str]
ContributionRow = tuple[int, str, str, str, int, float, int, int, int, str]
CheckpointRow = tuple[int, str, str, int | None, int | None, float]


def round_or_none(db: sqlite3.Connection, number: int) -> RoundRecord | None:
    row: RoundRow | None = db.execute(ROUND_COLUMNS + "WHERE number = ?", (number,)).fetchone()
    return None if row is None else round_of(row)


def round_record(db: sqlite3.Connection, number: int) -> RoundRecord:
    record = round_or_none(db, number)
    if record is None:
        raise NotFound(f"round {number} was never opened")
    return record


def in_flight_round(db: sqlite3.Connection) -> RoundRecord | None:
    row: RoundRow | None = db.execute(ROUND_COLUMNS + "WHERE state IN ('open', 'closing')").fetchone()
    return None if row is None else round_of(row)


def round_of(row: RoundRow) -> RoundRecord:
    number, state, contract, base, opened, closed, reason, model, deadline, signature = row
    return RoundRecord(
        number,
        RoundStatus(state),
        contract,
        base,
        utc(opened),
        None if closed is None else utc(closed),
        reason,
        model,
        None if deadline is None else utc(deadline),
        bytes.fromhex(signature),
    )


def contributions_of_round(db: sqlite3.Connection, round_number: int) -> list[ContributionRecord]:
    return [
        contribution_of(row)
        for row in db.execute(CONTRIBUTION_COLUMNS + "AND round = ? ORDER BY id", (round_number,))
    ]


def contribution_of(row: ContributionRow) -> ContributionRecord:
    round_number, participant, key, content, examples, at, cohort, received, float32, withheld = row
    names = json.loads(withheld)
    return ContributionRecord(
        round_number, participant, key, content, examples, utc(at), cohort, received, float32, tuple(names)
    )


def head_record(db: sqlite3.Connection) -> CheckpointRecord | None:
    row = db.execute("SELECT version FROM head WHERE only = 1").fetchone()
    return None if row is None else checkpoint_record(db, row[0])


def set_head(db: sqlite3.Connection, version: int) -> None:
    db.execute(
        "INSERT INTO head (only, version) VALUES (1, ?) "
        "ON CONFLICT (only) DO UPDATE SET version = excluded.version",
        (version,),
    )


def checkpoint_or_none(db: sqlite3.Connection, version: int) -> CheckpointRecord | None:
    row: CheckpointRow | None = db.execute(CHECKPOINT_COLUMNS + "WHERE version = ?", (version,)).fetchone()
    return None if row is None else checkpoint_of(row)


def checkpoint_record(db: sqlite3.Connection, version: int) -> CheckpointRecord:
    record = checkpoint_or_none(db, version)
    if record is None:
        raise NotFound(f"no checkpoint {version}")
    return record


def checkpoint_of(row: CheckpointRow) -> CheckpointRecord:
    version, blob, architecture, parent, committed_round, at = row
    return CheckpointRecord(version, blob, architecture, parent, committed_round, utc(at))


def lineage_of(db: sqlite3.Connection, version: int) -> set[int]:
    """`version` and every ancestor of it."""
    seen: set[int] = set()
    current: int | None = version
    while current is not None and current not in seen:
        seen.add(current)
        current = checkpoint_record(db, current).parent_version
    return seen


def check_sha256(what: str, value: str) -> None:
    if not _SHA256.fullmatch(value):
        raise InvalidInput(f"{what} hash must be a SHA-256 in lowercase hex, got {value!r}")


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
