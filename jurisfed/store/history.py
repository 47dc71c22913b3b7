"""A tier's rounds as its state file records them, for `round status` and `round history`.

Both aggregating tiers answer their operators from here rather than from memory, so what an
operator reads survives a restart: each round's record, the contributions it counted, the ones
it refused, the gates and metrics measured at its close, and who was excluded or dropped out.
"""

from __future__ import annotations

import time

from jurisfed.rounds import (
    LeftOutEntry,
    ParticipantEntry,
    PlanProgress,
    Rejection,
    RollbackEntry,
    RoundEntry,
    RoundHistory,
    RoundSummary,
)
from jurisfed.store.plans import PlanRecord
from jurisfed.store.round_records import RoundRecord, RoundStatus
from jurisfed.store.silo_registry import LeftOut
from jurisfed.store.tier_state import TierState


def round_entry(state: TierState, record: RoundRecord) -> RoundEntry:
    """Round `record` with its participants, refusals, checks and left-out participants."""
    number = record.number
    return RoundEntry(
        round=number,
        state=str(record.state),
        reason=record.reason,
        contract_sha256=record.contract_sha256,
        base_sha256=record.base_sha256,
        model_sha256=record.model_sha256,
        opened_at=record.opened_at.timestamp(),
        closed_at=None if record.closed_at is None else record.closed_at.timestamp(),
        participants=tuple(
            ParticipantEntry(
                c.participant,
                c.example_count,
                c.cohort_size,
                c.bytes_received,
                c.float32_bytes,
                c.content_sha256,
                c.withheld,
            )
            for c in state.contributions(number)
        ),
        refusals=tuple(Rejection(r.participant, r.code, r.detail) for r in state.refusals(number)),
        checks=tuple(state.checks.of_round(number)),
        left_out=tuple(left_out_entry(entry) for entry in state.registry.left_out(number)),
    )


def left_out_entry(entry: LeftOut) -> LeftOutEntry:
    return LeftOutEntry(entry.round, entry.participant, entry.dropout, entry.reason.value, entry.detail)


def plan_progress(plan: PlanRecord) -> PlanProgress:
    return PlanProgress(plan.name, plan.first_round, plan.last_round, str(plan.status), plan.reason)


def read_history(state: TierState) -> RoundHistory:
    """Every round recorded, the plans run, the rollbacks and the head."""
    head = state.head()
    return RoundHistory(
        rounds=tuple(round_entry(state, record) for record in state.rounds()),
        plans=tuple(plan_progress(plan) for plan in state.plans.plans()),
        rollbacks=tuple(
            RollbackEntry(r.from_version, r.to_version, r.reason, r.rolled_back_at.timestamp())
            for r in state.rollbacks()
        ),
        head_version=None if head is None else head.version,
        head_sha256="" if head is None else head.blob_sha256,
    )


def outcome(entry: RoundEntry) -> str:
    """ "committed", "rolled_back", "open", "closing", or the sentence a round that did not commit
    was closed with ("aborted: quorum not met ...", "gate_failed: ...", "declined: ...")."""
    status = RoundStatus(entry.state)
    if status in (RoundStatus.COMMITTED, RoundStatus.ROLLED_BACK) or status.in_flight:
        return entry.state
    return entry.reason or entry.state


def summary(entry: RoundEntry) -> RoundSummary:
    """The one-line view of a round `round status` prints."""
    closed = entry.closed_at if entry.closed_at is not None else time.time()
    return RoundSummary(
        round=entry.round,
        outcome=outcome(entry),
        participants=tuple(sorted(p.participant for p in entry.participants)),
        example_total=sum(p.example_count for p in entry.participants),
        bytes_received=sum(p.bytes_received for p in entry.participants),
        float32_bytes_equivalent=sum(p.float32_bytes for p in entry.participants),
        wall_time_s=max(0.0, closed - entry.opened_at),
        model_sha256=entry.model_sha256,
        rejections=entry.refusals,
    )
