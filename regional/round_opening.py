"""How a regional's local round comes to be: opened on a global announcement, or read back from
disk after a restart.

A RoundOpener records a new round (its base, with the jurisdiction's own local layers, and its
contract) in the state file and blob store before building it, and rebuilds the round a crash
interrupted: its contract and base read back, its recorded updates folded again and the
exclusions decided before the crash restored. It holds no lock and no round: the aggregator
installs what it builds, and decides which registered silos take part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from jurisfed.aggregation.open_round import OpenRound
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.eligibility import Excluded, ExclusionReason
from jurisfed.errors import JurisfedError
from jurisfed.modeling.evaluation import MlpProbe
from jurisfed.round_contract import RoundContract
from jurisfed.rounds import TrainingConfig
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import RoundStatus, TierState
from jurisfed.tensors import ModelSpec, Weights
from regional.local_round import LocalRound, RoundTerms
from regional.personalization import Personalizer


@dataclass(frozen=True)
class RestoredRound:
    """The round a crash interrupted, rebuilt from disk, before any silo was selected for it."""

    local: LocalRound
    spec: ModelSpec
    recorded: dict[str, Excluded]  # exclusions decided before the crash: they stand
    contributors: tuple[str, ...]  # silos whose recorded updates were folded again
    remaining_s: float


class RoundOpener:
    def __init__(
        self,
        state: TierState,
        blobs: BlobStore,
        rule_states: RuleStates,
        outliers: OutlierHandling,
        personalizer: Personalizer | None,
        *,
        min_silos: int,
        max_concurrent_uploads: int,
    ) -> None:
        self._state = state
        self._blobs = blobs
        self._rule_states = rule_states
        self._outliers = outliers
        self._personalizer = personalizer
        self._min_silos = min_silos
        self._max_concurrent = max_concurrent_uploads

    def open(
        self,
        number: int,
        spec: ModelSpec,
        training: TrainingConfig,
        base: Weights,
        deadline_in_s: float,
        *,
        terms: RoundTerms,
        local_layers: tuple[str, ...],
        traceparent: str,
    ) -> LocalRound:
        """Record round `number` on the global `base` with this jurisdiction's own `local_layers`,
        and build it; no silo selected yet."""
        local_base = self._with_local_layers(spec, base, local_layers)
        base_sha256 = self._blobs.put_weights(spec, local_base)
        self._blobs.put(terms.contract)
        self._state.open_round(
            number,
            terms.contract_sha256,
            base_sha256,
            duration_s=deadline_in_s,
            contract_signature=terms.signature,
        )
        opened = OpenRound.start(
            number,
            spec,
            training,
            local_base,
            deadline_in_s,
            codec=terms.silo_codec,
            max_concurrent=self._max_concurrent,
            base_sha256=base_sha256,
            traceparent=traceparent,
            rule=terms.rule,
            rule_state=self._rule_states.before(terms.rule, number),
            contract=terms.contract,
            contract_signature=terms.signature,
            probe=self._probe(spec, local_base),
        )
        return LocalRound(
            opened,
            terms,
            quorum=max(self._min_silos, terms.min_silos),
            global_base_sha256=self._blobs.put_weights(spec, base) if self._personalizer is not None else "",
            quarantined=self._outliers.active(),
        )

    def restore(self, spec_of: Callable[[str], ModelSpec]) -> RestoredRound | None:
        """The round a crash interrupted, rebuilt with its recorded updates folded again; None if
        there is none, or if it cannot be resumed (then it is recorded as aborted)."""
        resumption = self._state.resume()
        record = resumption.in_flight
        if record is None:
            return None
        try:
            contract = RoundContract.from_canonical_json(self._blobs.get(record.contract_sha256))
            spec = spec_of(contract.base.architecture)
            base = self._blobs.get_weights(record.base_sha256, spec)
        except (JurisfedError, ValueError) as error:
            self._state.close_round(
                record.number, RoundStatus.ABORTED, f"aborted: cannot resume after a restart ({error})"
            )
            return None
        remaining_s = 0.0
        if record.deadline_at is not None:
            remaining_s = max(0.0, (record.deadline_at - datetime.now(UTC)).total_seconds())
        terms = RoundTerms.of(contract, record.contract_signature)
        opened = OpenRound.start(
            record.number,
            spec,
            contract.training,
            base,
            remaining_s,
            codec=terms.silo_codec,
            max_concurrent=self._max_concurrent,
            base_sha256=record.base_sha256,
            rule=terms.rule,
            rule_state=self._rule_states.before(terms.rule, record.number),
            contract=terms.contract,
            contract_signature=terms.signature,
            probe=self._probe(spec, base),
        )
        local = LocalRound(
            opened, terms, quorum=max(self._min_silos, terms.min_silos), quarantined=self._outliers.active()
        )
        for kept in resumption.contributions:
            update = self._blobs.get_weights(kept.content_sha256, spec)
            opened.intake.restore(kept.participant, kept.idempotency_key, float(kept.example_count), update)
        recorded = {
            e.participant: Excluded(e.participant, ExclusionReason(e.reason.value), e.detail)
            for e in self._state.registry.left_out(record.number)
            if not e.dropout
        }
        return RestoredRound(
            local,
            spec,
            recorded,
            tuple(c.participant for c in resumption.contributions),
            remaining_s,
        )

    def _with_local_layers(self, spec: ModelSpec, base: Weights, local_layers: tuple[str, ...]) -> Weights:
        head = self._state.head()
        if not local_layers or head is None:
            return base
        own = self._blobs.get_weights(head.blob_sha256, spec)
        return {name: own[name] if name in local_layers else values for name, values in base.items()}

    def _probe(self, spec: ModelSpec, base: Weights) -> MlpProbe | None:
        """The screen's probe loss of `base` plus an update: on the validation set, if there is one."""
        validation = self._personalizer.validation if self._personalizer is not None else None
        return MlpProbe.of(spec.architecture, validation, base)
