"""What an operator's status call sees of the global aggregator: a GlobalSnapshot.

It is read from the regional desk's in-memory state (the open round, registered jurisdictions,
refusals, whether the federation finished) and then from the state file (rounds, contributions,
who was left out, the latest plan).
"""

from __future__ import annotations

from dataclasses import dataclass

from global_agg.regional_desk import RegionalDesk
from jurisfed.rounds import Contribution, LeftOutEntry, PlanProgress, Refusal, RoundState, RoundSummary
from jurisfed.store.history import read_history, summary
from jurisfed.store.tier_state import TierState


@dataclass(frozen=True)
class GlobalSnapshot:
    current_round: int
    state: RoundState
    jurisdictions: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]
    contributions: tuple[Contribution, ...]
    refusals: tuple[Refusal, ...]
    left_out: tuple[LeftOutEntry, ...] = ()
    plan: PlanProgress | None = None


def take_snapshot(desk: RegionalDesk, state: TierState) -> GlobalSnapshot:
    """The federation as it is now: the flags under the desk's lock first, then the state file."""
    with desk.changed:
        live = desk.live
        jurisdictions = tuple(sorted(desk.regionals))
        refusals = tuple(desk.refusals)
        round_state = (
            RoundState.FINISHED if desk.finished else RoundState.OPEN if live else RoundState.WAITING
        )
    # Read after the flags: a federation reported finished has every round on disk already.
    history = read_history(state)
    closed = [entry for entry in history.rounds if entry.closed_at is not None]
    return GlobalSnapshot(
        current_round=live.opened.number
        if live is not None
        else (history.rounds[-1].round if history.rounds else 0),
        state=round_state,
        jurisdictions=jurisdictions,
        rounds=tuple(summary(entry) for entry in closed),
        contributions=tuple(
            Contribution(
                round=entry.round,
                jurisdiction=p.participant,
                cohort_size=p.cohort_size,
                example_total=p.example_count,
                bytes_received=p.bytes_received,
                float32_bytes_equivalent=p.float32_bytes,
            )
            for entry in history.rounds
            for p in entry.participants
        ),
        refusals=refusals,
        left_out=tuple(e for entry in history.rounds for e in entry.left_out),
        plan=history.plans[-1] if history.plans else None,
    )
