"""Who did not count in a round, and why: refused contributions and dropouts, at either tier.

Both aggregating tiers record in their state file (tier_state.py) each contribution they refuse,
with a reason code, and, when a round closes, each participant they waited for that did not
count, with the dropout code its refusals explain (jurisfed.eligibility.DropoutReason): what
`round status` and `round history` show, and what jurisfed_dropouts_total counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from jurisfed.aggregation.intake import UPLOAD_BROKE_OFF, RoundClosed
from jurisfed.eligibility import DropoutReason
from jurisfed.errors import JurisfedError, NotFound
from jurisfed.store.tier_state import TierState
from jurisfed.telemetry import DropoutReason as DropoutLabel

# How each dropout reason is counted in jurisfed_dropouts_total.
DROPOUT_LABELS = {
    DropoutReason.DEADLINE_MISSED: DropoutLabel.DEADLINE,
    DropoutReason.LATE: DropoutLabel.DEADLINE,
    DropoutReason.UPLOAD_INCOMPLETE: DropoutLabel.DISCONNECTED,
    DropoutReason.UPDATE_REFUSED: DropoutLabel.REFUSED,
}
_EXPLAINED_BY_A_REFUSAL = (DropoutReason.UPLOAD_INCOMPLETE, DropoutReason.UPDATE_REFUSED)


def record_refusal(
    state: TierState, participant: str, round_number: int, error: JurisfedError, *, open_round: int | None
) -> DropoutReason | None:
    """Record a contribution to `round_number` refused with `error`; `open_round`: the round the
    tier has open, if any. Nothing is recorded for a round this tier never opened."""
    try:
        record = state.round(round_number)
    except NotFound:
        return None
    if isinstance(error, UPLOAD_BROKE_OFF):
        code = DropoutReason.UPLOAD_INCOMPLETE
    elif isinstance(error, RoundClosed) or not (record.state.in_flight and open_round == round_number):
        code = DropoutReason.LATE
    else:
        code = DropoutReason.UPDATE_REFUSED
    state.record_refusal(round_number, participant, code.value, str(error)[:1000])
    return code


def record_dropouts(
    state: TierState, round_number: int, absent: Iterable[str], what: str
) -> list[tuple[str, DropoutReason]]:
    """Record each participant in `absent` as a dropout of the round, with the reason its refusals
    give (deadline_missed if none); `what` names what it owed ("update", "aggregate"). The newly
    recorded, with their reasons."""
    refused = {r.participant: r.code for r in state.refusals(round_number)}
    recorded = []
    for participant in sorted(absent):
        code = refused.get(participant)
        reason = DropoutReason(code) if code in _EXPLAINED_BY_A_REFUSAL else DropoutReason.DEADLINE_MISSED
        detail = {
            DropoutReason.DEADLINE_MISSED: f"no {what} from {participant} by the round's deadline",
            DropoutReason.UPLOAD_INCOMPLETE: f"{participant}'s {what} broke off; nothing of it was kept",
            DropoutReason.UPDATE_REFUSED: f"{participant}'s {what} was refused (see the round's refusals)",
        }[reason]
        if state.registry.record_left_out(round_number, participant, reason, detail):
            recorded.append((participant, reason))
    return recorded
