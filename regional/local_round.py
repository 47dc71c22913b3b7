"""A regional's open round: the terms it took from the round's contract, and who takes part.

`RoundTerms` is what the regional acts on once the contract verified: the eligibility rules,
the cohort bounds and the signed bytes it relays to its silos. `LocalRound` holds the open
round and its cohort: every registered silo is decided when the round opens (select_cohort),
and a silo that registers later when it registers; each decision is final for the round. An
excluded silo is told why on its next long poll (once at once, then with every answer). A silo
in quarantine when the round opens is excluded with reason `quarantined`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from jurisfed.aggregation.factories import WeightedMean
from jurisfed.aggregation.open_round import OpenRound
from jurisfed.aggregation.process import AggregationFactory
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.eligibility import (
    EligibilityRules,
    Excluded,
    ExclusionReason,
    SiloFacts,
    check_eligibility,
    select_cohort,
)
from jurisfed.round_contract import RoundContract
from jurisfed.rounds import ExclusionNotice, RoundAnnouncement, RoundState
from jurisfed.store.silo_registry import SiloRecord


@dataclass(frozen=True)
class RoundTerms:
    """What the regional takes from a round's verified contract."""

    contract_sha256: str
    eligibility: EligibilityRules = field(default_factory=EligibilityRules)
    min_silos: int = 1  # the contract's minimum; the regional's own min_silos applies as well
    max_silos: int = 100
    contract: bytes = b""  # canonical JSON, relayed to the silos with the signature
    signature: bytes = b""
    silo_codec: Codec = field(default_factory=lambda: Codec(CodecKind.RAW))  # how silos encode updates
    rule: AggregationFactory = field(default_factory=WeightedMean)  # the contract's aggregation.silos

    @classmethod
    def of(cls, contract: RoundContract, signature: bytes) -> RoundTerms:
        return cls(
            contract.sha256,
            contract.eligibility,
            contract.cohort.min_silos_per_jurisdiction,
            contract.cohort.max_silos_per_jurisdiction,
            contract.canonical_json(),
            signature,
            contract.compression.silo_to_regional.to_codec(),
            contract.aggregation.silos_rule(),
        )


@dataclass
class LocalRound:
    opened: OpenRound
    terms: RoundTerms
    quorum: int  # fewest silo updates for the round to commit
    # The global model the round started from, as a blob, when the regional mixes it into what it
    # serves (regional/personalization.py); empty otherwise, and for a round resumed after a restart.
    global_base_sha256: str = ""
    selected: set[str] = field(default_factory=set)
    excluded: dict[str, Excluded] = field(default_factory=dict)
    told: set[str] = field(default_factory=set)  # excluded silos already told why
    quarantined: dict[str, str] = field(default_factory=dict)  # silo -> why, at the opening

    @property
    def number(self) -> int:
        return self.opened.number

    def select(self, silos: list[SiloRecord]) -> list[Excluded]:
        """Decide every registered silo at the round's opening; the newly excluded."""
        selection = select_cohort(
            self.terms.eligibility, [_facts(s) for s in silos], self.number, max_silos=self.terms.max_silos
        )
        self.selected = set(selection.selected) - set(self.quarantined)
        self.excluded = {e.silo_id: e for e in selection.excluded}
        for silo_id in selection.selected:
            if silo_id in self.quarantined:
                self.excluded[silo_id] = self._quarantine_exclusion(silo_id)
        return list(self.excluded.values())

    def admit(self, silo: SiloRecord) -> Excluded | None:
        """Decide a silo that registered after the opening; its exclusion if it is excluded."""
        if silo.silo_id in self.selected or silo.silo_id in self.excluded:
            return None
        if silo.silo_id in self.quarantined:
            self.excluded[silo.silo_id] = self._quarantine_exclusion(silo.silo_id)
            return self.excluded[silo.silo_id]
        decision = check_eligibility(self.terms.eligibility, _facts(silo), self.number)
        if isinstance(decision, Excluded):
            self.excluded[silo.silo_id] = decision
            return decision
        if len(self.selected) >= self.terms.max_silos:
            full = Excluded(
                silo.silo_id,
                ExclusionReason.COHORT_FULL,
                f"{silo.silo_id} is eligible, but round {self.number} already has the {self.terms.max_silos} "
                "silos it takes from this jurisdiction; it takes part in a later round",
            )
            self.excluded[silo.silo_id] = full
            return full
        self.selected.add(silo.silo_id)
        return None

    def notice(self, silo_id: str) -> ExclusionNotice | None:
        excluded = self.excluded.get(silo_id)
        return None if excluded is None else ExclusionNotice(excluded.reason.value, excluded.sentence)

    def exclusion_answer(self, silo_id: str, answer: RoundAnnouncement) -> RoundAnnouncement:
        """`answer` (a waiting one) carrying why `silo_id` takes no part in this round, and the hash
        of the round's model, which a stale silo fetches to rejoin."""
        notice = self.notice(silo_id)
        if notice is None or answer.state is not RoundState.WAITING:
            return answer
        return replace(answer, round=self.number, base_model_sha256=self.opened.base_sha256, exclusion=notice)

    def _quarantine_exclusion(self, silo_id: str) -> Excluded:
        return Excluded(silo_id, ExclusionReason.QUARANTINED, self.quarantined[silo_id])

    def done(self) -> bool:
        """Every selected silo has contributed, and that is at least the quorum."""
        contributed = set(self.opened.intake.contributors)
        return contributed >= self.selected and len(contributed) >= self.quorum


def _facts(silo: SiloRecord) -> SiloFacts:
    return SiloFacts(
        silo.silo_id, silo.example_count, silo.schema_sha256, silo.code_version, silo.last_synced_round
    )
