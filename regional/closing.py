"""How a regional records its rounds: who is excluded when a round opens, and how it closes.

A local round closes with quorum (the larger of the regional's own `min_silos` and the
contract's minimum): committed, the mean delta added to the round's base as the jurisdiction's
personalized model (a blob, and the checkpoint of that round in the regional's state); or aborted
below quorum, nothing forwarded. Every selected silo that did not count is recorded as a dropout
with its reason, every excluded silo with its eligibility code; both go to the audit log and to
jurisfed_dropouts_total.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jurisfed.aggregation.differential_privacy import find_dp
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.eligibility import Excluded, ExclusionReason
from jurisfed.errors import WrongState
from jurisfed.participation import DROPOUT_LABELS, record_dropouts
from jurisfed.policy.model import PrivacySpend
from jurisfed.round_contract import RoundContract
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, TierState
from jurisfed.telemetry import DropoutReason as DropoutLabel
from jurisfed.telemetry import Instrumentation, RoundOutcome
from jurisfed.tensors import Weights, add
from regional.local_round import LocalRound
from regional.personalization import Personalizer, ServedModels
from regional.privacy_budget import PrivacyBudget

log = logging.getLogger("jurisfed.regional")


@dataclass(frozen=True)
class ClosedRound:
    number: int
    mean_delta: Weights | None  # None when the round aborted
    cohort_size: int
    example_total: int
    reason: str
    privacy: PrivacySpend | None = None  # the DP spend after this round's release; None: no DP


@dataclass(frozen=True)
class RoundRecorder:
    identity: Identity
    state: TierState
    blobs: BlobStore
    audit: AuditSink
    instruments: Instrumentation
    outliers: OutlierHandling
    rule_states: RuleStates
    served: ServedModels
    personalizer: Personalizer | None = None  # with a validation set: serve the best mixture

    def close(self, local: LocalRound, privacy: PrivacyBudget, global_location: str | None) -> ClosedRound:
        """Close the round under its rule: outliers quarantined and left out, the DP release (if the
        rule adds noise) recorded in the ledger before anything derived from it is kept or sent."""
        opened = local.opened
        number = opened.number
        mean = opened.intake.close()  # no upload can be recorded after this
        self.state.begin_closing(number)
        folded = opened.intake.folded
        outliers = self.outliers.judged(number, folded)
        for silo, why in outliers.items():
            if self.state.registry.record_left_out(number, silo, ExclusionReason.QUARANTINED, why):
                self.instruments.metrics.dropout(DropoutLabel.QUARANTINED)
        weights = opened.intake.weights
        cohort = [silo for silo in opened.intake.contributors if silo not in outliers]
        examples = int(sum(weights[silo] for silo in cohort))
        quorum_met = mean is not None and len(cohort) >= local.quorum
        self._record(
            EventKind.GATE,
            round_number=number,
            decision=Decision.PASS if quorum_met else Decision.FAIL,
            details={Detail.METRIC: "silo quorum", Detail.VALUE: len(cohort), Detail.THRESHOLD: local.quorum},
        )
        spend, refusal = None, None
        if mean is not None and quorum_met and find_dp(local.terms.rule) is not None:
            try:
                spend = privacy.release(
                    RoundContract.from_canonical_json(local.terms.contract), global_location
                )
            except WrongState as error:
                refusal = f"aborted: {error}"
        if mean is None or not quorum_met or refusal is not None:
            reason = refusal or f"aborted: quorum not met ({len(cohort)} of {local.quorum} silos)"
            self.state.close_round(number, RoundStatus.ABORTED, reason)
            mean = None
        else:
            reason = "committed"
            self.rule_states.save(local.terms.rule, number, folded.state)
            own_model = add(opened.base, mean)
            self._serve_mixture(local, own_model)
            personalized = self.blobs.put_weights(opened.spec, own_model)
            checkpoint = NewCheckpoint(personalized, opened.spec.architecture)
            self.state.close_round(number, RoundStatus.COMMITTED, reason, checkpoint=checkpoint)
            self._record(
                EventKind.COMMIT,
                round_number=number,
                digests={"model": personalized},
                details={Detail.CHECKPOINT_VERSION: number, Detail.COHORT_SIZE: len(cohort)},
            )
        absent = local.selected - set(opened.intake.contributors)
        for silo, dropout in record_dropouts(self.state, number, absent, "update"):
            self.instruments.metrics.dropout(DROPOUT_LABELS[dropout])
            self._record(
                EventKind.DROPOUT,
                round_number=number,
                subject=self._silo(silo),
                details={Detail.REASON: dropout.value},
            )
        record = self.state.round(number)
        closed_at = record.closed_at or record.opened_at
        self.instruments.metrics.round_closed(
            outcome=RoundOutcome.COMMITTED if mean is not None else RoundOutcome.ABORTED,
            duration_s=max(0.0, closed_at.timestamp() - record.opened_at.timestamp()),
            selected=len(local.selected),
            participants=len(cohort),
        )
        log.info("round closed", extra={"round": number, "outcome": reason, "silos": len(cohort)})
        return ClosedRound(number, mean, len(cohort), examples, reason, spend)

    def _serve_mixture(self, local: LocalRound, own_model: Weights) -> None:
        """With a validation set, record the mixture of the jurisdiction's model and the round's global
        model that its silos will be served (regional/personalization.py); before the commit, so a
        committed round never lacks the mixture it chose."""
        if self.personalizer is None or not local.global_base_sha256:
            return
        spec = local.opened.spec
        global_model = self.blobs.get_weights(local.global_base_sha256, spec)
        mixed = self.personalizer.mix(spec.architecture, global_model, own_model)
        if mixed is None:
            return
        self.served.record(local.number, self.blobs.put_weights(spec, mixed.weights), mixed.choice)
        log.info(
            "personalized model chosen on validation",
            extra={
                "round": local.number,
                "mixing_weight": mixed.choice.mixing_weight,
                "validation_accuracy": round(mixed.choice.validation_accuracy, 4),
                "global_validation_accuracy": round(mixed.choice.global_validation_accuracy, 4),
            },
        )

    def exclude(self, number: int, excluded: Excluded) -> None:
        """Record that a silo is excluded from round `number` (once per silo and round)."""
        if not self.state.registry.record_left_out(
            number, excluded.silo_id, excluded.reason, excluded.sentence
        ):
            return
        self.instruments.metrics.dropout(DropoutLabel.INELIGIBLE)
        self._record(
            EventKind.ELIGIBILITY_EXCLUSION,
            round_number=number,
            subject=self._silo(excluded.silo_id),
            details={Detail.REASON: excluded.reason.value},
        )
        log.info(
            "silo excluded from the round",
            extra={"round": number, "silo": excluded.silo_id, "reason": str(excluded.reason)},
        )

    def _silo(self, node: str) -> Identity:
        return Identity(self.identity.jurisdiction, Tier.SILO, node)

    def _record(self, kind: EventKind, **fields: Any) -> None:
        self.audit.record(
            AuditEvent(kind=kind, actor=self.identity, jurisdiction=self.identity.jurisdiction, **fields)
        )
