"""How the global aggregator closes a round: quorum, then acceptance gates, then commit or not.

The round stops taking aggregates (in memory, then in the state file), and:
  aborted by an operator, or fewer jurisdictions than the quorum  -> aborted, nothing merged;
  the candidate (base + weighted mean) fails a gate                -> gate_failed, model unchanged;
  otherwise                                                        -> committed: the candidate is
                                                                      stored as a blob and becomes
                                                                      checkpoint N, the new head.
Every check lands in the audit log (one GATE event each) and in the state file (`round
history`); every jurisdiction expected but absent is recorded as a dropout with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from global_agg.acceptance import Acceptance
from jurisfed.aggregation.open_round import OpenRound
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity
from jurisfed.eligibility import ExclusionReason
from jurisfed.participation import DROPOUT_LABELS, record_dropouts
from jurisfed.round_contract import RoundContract
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, TierState
from jurisfed.telemetry import Instrumentation, RoundOutcome
from jurisfed.tensors import ModelSpec, Weights, add

log = logging.getLogger("jurisfed.global")


@dataclass(frozen=True)
class Closed:
    number: int
    status: RoundStatus
    reason: str
    model: Weights  # the head after the round
    model_sha256: str


class RoundCloser:
    def __init__(
        self,
        identity: Identity,
        spec: ModelSpec,
        state: TierState,
        blobs: BlobStore,
        acceptance: Acceptance,
        audit: AuditSink,
        instruments: Instrumentation,
        *,
        outliers: OutlierHandling,
        rule_states: RuleStates,
    ) -> None:
        """`outliers` quarantines the jurisdictions a screening rule kept out; `rule_states` keeps
        the jurisdictions rule's state from round to round."""
        self._outliers = outliers
        self._rule_states = rule_states
        self._identity = identity
        self._spec = spec
        self._state = state
        self._blobs = blobs
        self._acceptance = acceptance
        self._audit = audit
        self._instruments = instruments

    def close(
        self,
        opened: OpenRound,
        contract: RoundContract,
        *,
        expected: Iterable[str],
        declined: Iterable[str],
        aborted_by: str | None = None,
    ) -> Closed:
        """Decide round `opened` under its `contract` (quorum, gates); `expected`: the jurisdictions
        it waited for (registered members of the cohort), `declined`: those whose policy refused it."""
        number = opened.number
        mean = opened.intake.close()  # no upload can be recorded after this
        self._state.begin_closing(number)
        folded = opened.intake.folded
        outliers = self._outliers.judged(number, folded)
        for jurisdiction, why in outliers.items():
            self._state.registry.record_left_out(number, jurisdiction, ExclusionReason.QUARANTINED, why)
        cohort = tuple(j for j in opened.intake.contributors if j not in outliers)
        quorum = contract.quorum.min_jurisdictions
        if aborted_by is not None:
            closed = self._not_merged(opened, RoundStatus.ABORTED, f"aborted: {aborted_by}")
        else:
            quorum_met = mean is not None and len(cohort) >= quorum
            self._record(
                EventKind.GATE,
                round_number=number,
                decision=Decision.PASS if quorum_met else Decision.FAIL,
                details={
                    Detail.METRIC: "jurisdiction quorum",
                    Detail.VALUE: len(cohort),
                    Detail.THRESHOLD: quorum,
                },
            )
            if mean is None or not quorum_met:
                reason = f"aborted: quorum not met ({len(cohort)} of {quorum} jurisdictions)"
                closed = self._not_merged(opened, RoundStatus.ABORTED, reason)
            else:
                closed = self._judge(opened, contract, add(opened.base, mean))
                self._rule_states.save(opened.intake.rule, number, folded.state)
        self._record_dropouts(number, set(expected) - set(opened.intake.contributors) - set(declined))
        outcome = {
            RoundStatus.COMMITTED: RoundOutcome.COMMITTED,
            RoundStatus.GATE_FAILED: RoundOutcome.ROLLED_BACK,
        }.get(closed.status, RoundOutcome.ABORTED)
        record = self._state.round(number)
        self._instruments.metrics.round_closed(
            outcome=outcome,
            duration_s=max(
                0.0, (record.closed_at or record.opened_at).timestamp() - record.opened_at.timestamp()
            ),
            selected=len(set(expected)),
            participants=len(cohort),
        )
        log.info(
            "round closed", extra={"round": number, "outcome": closed.reason, "jurisdictions": list(cohort)}
        )
        return closed

    def _judge(self, opened: OpenRound, contract: RoundContract, candidate: Weights) -> Closed:
        number = opened.number
        verdict = self._acceptance.judge(contract.gates, candidate, opened.base)
        self._state.checks.record(number, verdict.checks)
        for check in verdict.checks:
            if check.is_gate:
                self._record(
                    EventKind.GATE,
                    round_number=number,
                    decision=Decision.PASS if check.passed else Decision.FAIL,
                    details={
                        Detail.METRIC: check.name,
                        Detail.VALUE: check.value if check.value is not None else "not a number",
                        Detail.THRESHOLD: check.threshold if check.threshold is not None else "none",
                    },
                )
        metrics = self._instruments.metrics
        metrics.update_norm(verdict.update_norm)
        if verdict.accuracy is not None and verdict.accuracy_delta is not None:
            metrics.evaluated(
                metric="accuracy",
                value=verdict.accuracy,
                delta=verdict.accuracy_delta,
                jurisdiction=self._identity.jurisdiction,
            )
        if not verdict.passed:
            log.warning("round failed its gates", extra={"round": number, "why": verdict.summary})
            return self._not_merged(opened, RoundStatus.GATE_FAILED, f"gate_failed: {verdict.summary}")
        blob = self._blobs.put_weights(self._spec, candidate)
        self._state.close_round(
            number,
            RoundStatus.COMMITTED,
            "committed",
            checkpoint=NewCheckpoint(blob, self._spec.architecture),
        )
        self._record(
            EventKind.COMMIT,
            round_number=number,
            digests={"model": blob},
            details={
                Detail.CHECKPOINT_VERSION: number,
                Detail.COHORT_SIZE: len(opened.intake.contributors),
            },
        )
        return Closed(number, RoundStatus.COMMITTED, "committed", candidate, blob)

    def _not_merged(self, opened: OpenRound, status: RoundStatus, reason: str) -> Closed:
        record = self._state.close_round(opened.number, status, reason)
        return Closed(opened.number, status, reason, opened.base, record.model_sha256)

    def _record_dropouts(self, number: int, absent: set[str]) -> None:
        for _, reason in record_dropouts(self._state, number, absent, "aggregate"):
            self._instruments.metrics.dropout(DROPOUT_LABELS[reason])

    def _record(self, kind: EventKind, **fields: Any) -> None:
        self._audit.record(
            AuditEvent(kind=kind, actor=self._identity, jurisdiction=self._identity.jurisdiction, **fields)
        )
