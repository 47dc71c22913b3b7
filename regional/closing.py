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

from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.eligibility import Excluded
from jurisfed.participation import DROPOUT_LABELS, record_dropouts
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, TierState
from jurisfed.telemetry import DropoutReason as DropoutLabel
from jurisfed.telemetry import Instrumentation, RoundOutcome
from jurisfed.tensors import Weights, add
from regional.local_round import LocalRound

log = logging.getLogger("jurisfed.regional")


@dataclass(frozen=True)
class ClosedRound:
    number: int
    mean_delta: Weights | None  # None when the round aborted
    cohort_size: int
    example_total: int
    reason: str


@dataclass(frozen=True)
class RoundRecorder:
    identity: Identity
    state: TierState
    blobs: BlobStore
    audit: AuditSink
    instruments: Instrumentation

    def close(self, local: LocalRound) -> ClosedRound:
        opened = local.opened
        number = opened.number
        mean = opened.intake.close()  # no upload can be recorded after this
        self.state.begin_closing(number)
        cohort = opened.intake.contributors
        examples = int(opened.intake.total_weight)
        quorum_met = mean is not None and len(cohort) >= local.quorum
        self._record(
            EventKind.GATE,
            round_number=number,
            decision=Decision.PASS if quorum_met else Decision.FAIL,
            details={Detail.METRIC: "silo quorum", Detail.VALUE: len(cohort), Detail.THRESHOLD: local.quorum},
        )
        if mean is None or not quorum_met:
            reason = f"aborted: quorum not met ({len(cohort)} of {local.quorum} silos)"
            self.state.close_round(number, RoundStatus.ABORTED, reason)
            mean = None
        else:
            reason = "committed"
            personalized = self.blobs.put_weights(opened.spec, add(opened.base, mean))
            checkpoint = NewCheckpoint(personalized, opened.spec.architecture)
            self.state.close_round(number, RoundStatus.COMMITTED, reason, checkpoint=checkpoint)
        for silo, dropout in record_dropouts(self.state, number, local.selected - set(cohort), "update"):
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
        return ClosedRound(number, mean, len(cohort), examples, reason)

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
