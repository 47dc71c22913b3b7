"""Which silos may take part in a round, and why the others may not.

A round contract carries `EligibilityRules`; the regional checks every registered silo against
them before handing out the round (`check_eligibility`, or `select_cohort` for the whole
jurisdiction at once). A silo that is left out gets an `Excluded` with a reason code, which is
what the silo is told, what the tier records (tier_state.py) and what `round status` counts,
and a sentence a person can act on. Silos that were selected but did not deliver are dropouts,
with codes of their own (`DropoutReason`). Fail closed: a rule the silo cannot show it meets
(an undeclared schema hash when one is required) excludes it.

Staleness is the number of rounds since the silo last synced (fetched a round's model): the
regional records a sync when a silo fetches the model, so a silo that missed rounds is told
to fetch the current checkpoint, and is eligible again once it has.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from jurisfed.config import setting
from jurisfed.errors import InvalidInput


class ExclusionReason(enum.StrEnum):
    """Why a registered silo was not selected for a round."""

    QUARANTINED = "quarantined"
    SCHEMA_DRIFT = "schema_drift"
    WRONG_CODE_VERSION = "wrong_code_version"
    TOO_FEW_EXAMPLES = "too_few_examples"
    STALE = "stale"
    COHORT_FULL = "cohort_full"


class DropoutReason(enum.StrEnum):
    """Why a selected participant contributed nothing to a round."""

    DEADLINE_MISSED = "deadline_missed"  # no complete update by the deadline
    UPLOAD_INCOMPLETE = "upload_incomplete"  # the stream broke off; nothing of it was kept
    UPDATE_REFUSED = "update_refused"  # a complete update failed validation or its signature
    LATE = "late"  # arrived after the round closed: refused as stale


@dataclass(frozen=True)
class EligibilityRules:
    min_examples: int = setting("fewest training examples a silo must hold", 1)
    max_staleness_rounds: int | None = setting(
        "most rounds since a silo last fetched a model; empty: no limit", None
    )
    code_versions: tuple[str, ...] = setting("silo code versions accepted; empty: any", ())
    schema_sha256: str | None = setting("data schema hash every silo must declare; empty: any", None)

    def __post_init__(self) -> None:
        if self.min_examples < 1:
            raise ValueError(f"min_examples must be at least 1, got {self.min_examples}")
        if self.max_staleness_rounds is not None and self.max_staleness_rounds < 0:
            raise ValueError(f"max_staleness_rounds must not be negative, got {self.max_staleness_rounds}")
        if any(not version for version in self.code_versions):
            raise ValueError("code_versions must not hold an empty version")


@dataclass(frozen=True)
class SiloFacts:
    """What the regional knows of a silo: its registration and when it last synced."""

    silo_id: str
    example_count: int
    schema_sha256: str
    code_version: str
    last_synced_round: int | None  # None: never fetched a model; it will get the current one
    quarantined: bool = False


@dataclass(frozen=True)
class Eligible:
    silo_id: str

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Excluded:
    silo_id: str
    reason: ExclusionReason
    sentence: str

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class CohortSelection:
    round: int
    selected: tuple[str, ...]
    excluded: tuple[Excluded, ...]

    def counts(self) -> Counter[ExclusionReason]:
        """Excluded silos per reason code."""
        return Counter(excluded.reason for excluded in self.excluded)


def check_eligibility(rules: EligibilityRules, silo: SiloFacts, current_round: int) -> Eligible | Excluded:
    """Eligible, or Excluded with the first rule the silo breaks (quarantine first, staleness last)."""
    if silo.quarantined:
        return Excluded(
            silo.silo_id,
            ExclusionReason.QUARANTINED,
            f"{silo.silo_id} is quarantined and takes part in no round until an operator re-admits it",
        )
    if rules.schema_sha256 is not None and silo.schema_sha256 != rules.schema_sha256:
        declared = silo.schema_sha256 or "no schema hash"
        return Excluded(
            silo.silo_id,
            ExclusionReason.SCHEMA_DRIFT,
            f"{silo.silo_id} declared {declared}, but round {current_round} requires data schema "
            f"{rules.schema_sha256}: its data no longer has the columns and types the model was built for",
        )
    if rules.code_versions and silo.code_version not in rules.code_versions:
        return Excluded(
            silo.silo_id,
            ExclusionReason.WRONG_CODE_VERSION,
            f"{silo.silo_id} runs code version {silo.code_version or 'unknown'}; round {current_round} "
            f"accepts {', '.join(rules.code_versions)}: upgrade the silo trainer",
        )
    if silo.example_count < rules.min_examples:
        return Excluded(
            silo.silo_id,
            ExclusionReason.TOO_FEW_EXAMPLES,
            f"{silo.silo_id} holds {silo.example_count} examples; round {current_round} requires at least "
            f"{rules.min_examples}",
        )
    if rules.max_staleness_rounds is not None and silo.last_synced_round is not None:
        staleness = current_round - silo.last_synced_round
        if staleness < 0:
            raise InvalidInput(
                f"{silo.silo_id} is recorded as synced in round {silo.last_synced_round}, "
                f"after the current round {current_round}"
            )
        if staleness > rules.max_staleness_rounds:
            return Excluded(
                silo.silo_id,
                ExclusionReason.STALE,
                f"{silo.silo_id} last synced in round {silo.last_synced_round}, {staleness} rounds before "
                f"round {current_round}; at most {rules.max_staleness_rounds} are allowed: fetch the "
                "current checkpoint to rejoin",
            )
    return Eligible(silo.silo_id)


def select_cohort(
    rules: EligibilityRules, silos: Sequence[SiloFacts], current_round: int, *, max_silos: int
) -> CohortSelection:
    """The silos of one jurisdiction that take part in `current_round`: every eligible one, up to
    `max_silos`. When more are eligible, the selection rotates with the round number (over the
    silos sorted by id), so no silo is left out round after round; the rest are COHORT_FULL."""
    if max_silos < 1:
        raise InvalidInput(f"max_silos must be at least 1, got {max_silos}")
    ids = [silo.silo_id for silo in silos]
    if len(set(ids)) != len(ids):
        raise InvalidInput(f"silo ids must be distinct, got {sorted(ids)}")
    eligible: list[str] = []
    excluded: list[Excluded] = []
    for silo in sorted(silos, key=lambda s: s.silo_id):
        decision = check_eligibility(rules, silo, current_round)
        if isinstance(decision, Excluded):
            excluded.append(decision)
        else:
            eligible.append(decision.silo_id)
    if len(eligible) > max_silos:
        start = current_round % len(eligible)
        rotated = eligible[start:] + eligible[:start]
        for silo_id in rotated[max_silos:]:
            excluded.append(
                Excluded(
                    silo_id,
                    ExclusionReason.COHORT_FULL,
                    f"{silo_id} is eligible, but round {current_round} takes at most {max_silos} silos "
                    "from this jurisdiction and selected others; it rotates in a later round",
                )
            )
        eligible = sorted(rotated[:max_silos])
    return CohortSelection(current_round, tuple(eligible), tuple(excluded))
