"""The global aggregator's state and round loop.

Rounds are numbered from 1. Round r starts from the newest committed checkpoint, is announced
to every regional, accepts one aggregate per jurisdiction until all registered jurisdictions
have sent theirs or the deadline passes, and then commits checkpoint r (quorum of
jurisdictions met: the example-weighted mean of their deltas is added to the model) or aborts
with a reason and leaves the model unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import Board, OpenRound, wait_for_announcement
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind, refusal_reason
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.roles import require_tier
from jurisfed.auth.signatures import StreamSignature
from jurisfed.errors import JurisfedError, NotAllowed, WrongState
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Endpoint, Flow
from jurisfed.rounds import (
    AggregateHeader,
    Contribution,
    Refusal,
    RoundAnnouncement,
    RoundState,
    RoundSummary,
    TrainingConfig,
)
from jurisfed.store.checkpoints import CheckpointStore
from jurisfed.telemetry import Attribute, Direction, Hop, Instrumentation, RoundOutcome, SpanName, traceparent
from jurisfed.tensors import ModelSpec, Weights, add
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2

log = logging.getLogger("jurisfed.global")

# Aggregates staged at once; there is one per jurisdiction per round.
MAX_CONCURRENT_AGGREGATES = 8
_ENCODINGS = {"int8": tensors_pb2.ENCODING_INT8, "none": tensors_pb2.ENCODING_RAW}


@dataclass(frozen=True)
class RoundPlan:
    rounds: int
    round_deadline_s: float
    expected_jurisdictions: int
    start_timeout_s: float
    min_jurisdictions: int
    training: TrainingConfig
    upstream_compression: str = "int8"


@dataclass(frozen=True)
class GlobalSnapshot:
    current_round: int
    state: RoundState
    jurisdictions: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]
    contributions: tuple[Contribution, ...]
    refusals: tuple[Refusal, ...]


class GlobalCoordinator:
    def __init__(
        self,
        identity: Identity,
        spec: ModelSpec,
        initial: Weights,
        store: CheckpointStore,
        plan: RoundPlan,
        *,
        audit: AuditSink,
        guard: PolicyGuard,
        members: Mapping[str, PolicyGuard],
        instruments: Instrumentation | None = None,
    ) -> None:
        """`guard` holds the global's own policy; `members` each member jurisdiction's policy,
        which must also allow every aggregate that jurisdiction exports."""
        self.identity = identity
        self._audit = audit
        self._instruments = instruments or Instrumentation.off()
        self._guard = guard
        self._members = dict(members)
        self._endpoint = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, guard.location)
        self._spec = spec
        self._store = store
        self._plan = plan
        if not store.versions():
            store.save(0, spec, initial)
        version = store.versions()[-1]
        self._model = store.load(version, spec)
        self._model_sha256 = store.info(version).sha256
        # Round r commits checkpoint r, so a restarted global goes on after its newest one.
        self._first_round = version + 1
        self._regionals: dict[str, Identity] = {}
        self._round: OpenRound | None = None
        self._state = RoundState.WAITING
        self._stopping = False
        self._history: list[RoundSummary] = []
        self._contributions: list[Contribution] = []
        self._refusals: list[Refusal] = []
        self._declined: set[str] = set()  # jurisdictions that declined the open round
        self._changed = threading.Condition()

    # --- regional side -----------------------------------------------------------------------

    def register_regional(self, peer: Identity) -> str:
        require_tier(peer, Tier.REGIONAL, "register as a regional aggregator")
        if peer.jurisdiction not in self._members:
            raise NotAllowed(
                f"no residency policy of jurisdiction {peer.jurisdiction} is installed at the global "
                f"aggregator (member policies: {', '.join(sorted(self._members)) or 'none'})"
            )
        with self._changed:
            known = self._regionals.get(peer.jurisdiction)
            if known is not None and known.node != peer.node:
                log.warning("regional replaced", extra={"jurisdiction": peer.jurisdiction, "old": known.node})
            self._regionals[peer.jurisdiction] = peer
            self._changed.notify_all()
        log.info("regional registered", extra={"jurisdiction": peer.jurisdiction, "node": peer.node})
        return peer.jurisdiction

    def wait_for_round(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        self._check_registered(peer)
        return wait_for_announcement(self._changed, self._board, after_round, max_wait_s)

    def _board(self) -> Board:
        return Board(self._round, self._state is RoundState.FINISHED, self._stopping)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        self._check_registered(peer)
        current = self._open_round(round_number)
        flow = Flow(Artifact.MODEL_CHECKPOINT, self._endpoint, self._regional_endpoint(peer))
        self._require_both(peer, flow, round_number)
        return self._spec, current.base

    def decline_round(
        self, peer: Identity, round_number: int, rule_id: str, reason: str, policy_sha256: str
    ) -> None:
        """A regional's policy refused this round: go on without that jurisdiction at once."""
        self._check_registered(peer)
        self._open_round(round_number)
        refusal = Refusal(round_number, peer.jurisdiction, rule_id[:200], reason[:900])
        self._audit.record(
            AuditEvent(
                kind=EventKind.CONTRACT_DECISION,
                actor=self.identity,
                jurisdiction=peer.jurisdiction,
                round_number=round_number,
                subject=peer,
                policy_hash=policy_sha256 or None,
                decision=Decision.DENY,
                rule=refusal.rule_id or "unnamed",
                details={Detail.REASON: refusal.reason or "no reason given"},
            )
        )
        with self._changed:
            self._declined.add(peer.jurisdiction)
            self._refusals.append(refusal)
            self._changed.notify_all()
        log.warning(
            "round declined by a regional's policy",
            extra={"round": round_number, "jurisdiction": peer.jurisdiction, "rule": rule_id},
        )

    def _regional_endpoint(self, peer: Identity) -> Endpoint:
        return Endpoint(Tier.REGIONAL, peer.jurisdiction, self._members[peer.jurisdiction].location)

    def _require_both(self, peer: Identity, flow: Flow, round_number: int) -> None:
        """The exporting jurisdiction's policy and the global's own must both allow `flow`."""
        self._members[peer.jurisdiction].require(flow, round_number=round_number, subject=peer)
        self._guard.require(flow, round_number=round_number, subject=peer)

    def submit_aggregate(
        self,
        peer: Identity,
        header: AggregateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
    ) -> Receipt:
        """Take a jurisdiction's aggregate; its signature is verified as it streams and recorded."""
        signature = StreamSignature(header.round, peer, certificate_pem, header.content_signature)
        try:
            receipt = self._take_aggregate(peer, header, signature.wrap(chunks), meter)
        except JurisfedError as error:
            self._record(
                EventKind.AGGREGATE_RECEIVED,
                peer.jurisdiction,
                round_number=header.round,
                subject=peer,
                decision=Decision.DENY,
                details={Detail.REASON: refusal_reason(error), Detail.BYTES: meter.total_bytes},
            )
            raise
        if not receipt.duplicate:
            digests, evidence = signature.evidence()
            self._record(
                EventKind.AGGREGATE_RECEIVED,
                peer.jurisdiction,
                round_number=header.round,
                subject=peer,
                decision=Decision.ALLOW,
                digests=digests,
                details={
                    Detail.COHORT_SIZE: header.cohort_size,
                    Detail.EXAMPLE_COUNT: header.example_total,
                    Detail.BYTES: meter.total_bytes,
                    **evidence,
                },
            )
        return receipt

    def _take_aggregate(
        self, peer: Identity, header: AggregateHeader, chunks: Iterable[tensors_pb2.TensorChunk], meter: Meter
    ) -> Receipt:
        self._check_registered(peer)
        current = self._open_round(header.round)
        self._check_attestation(peer, header)
        if header.compression != current.upstream_compression:
            raise WrongState(
                f"round {header.round} asks for {current.upstream_compression} aggregates, "
                f"not {header.compression}"
            )
        withheld = frozenset(header.withheld_tensors)
        flow = Flow(
            artifact=Artifact.AGGREGATE,
            source=self._regional_endpoint(peer),
            destination=self._endpoint,
            cohort_silos=header.cohort_size,
            compressed=header.compression != "none",
            layers=frozenset(t.name for t in self._spec.tensors) - withheld,
            # The header has no field that could name a silo or a host.
            metadata_fields=frozenset(),
        )
        self._require_both(peer, flow, header.round)
        try:
            receipt = current.intake.receive(
                peer.jurisdiction,
                header.idempotency_key,
                float(header.example_total),
                chunks,
                withheld=withheld,
            )
        finally:
            current.intake.count_bytes(meter.total_bytes)
            self._instruments.metrics.bytes_moved(Hop.REGIONAL_GLOBAL, Direction.RECEIVED, meter.total_bytes)
        carried = self._spec.without(header.withheld_tensors)
        with self._changed:
            if not receipt.duplicate:
                self._contributions.append(
                    Contribution(
                        round=header.round,
                        jurisdiction=peer.jurisdiction,
                        cohort_size=header.cohort_size,
                        example_total=header.example_total,
                        bytes_received=meter.total_bytes,
                        float32_bytes_equivalent=carried.float32_bytes,
                    )
                )
            self._changed.notify_all()
        log.info("aggregate received", extra={"round": header.round, "jurisdiction": peer.jurisdiction})
        return receipt

    def _check_attestation(self, peer: Identity, header: AggregateHeader) -> None:
        installed = self._members[peer.jurisdiction].policy
        if header.policy_sha256 != installed.sha256:
            raise WrongState(
                f"the {peer.jurisdiction} regional attests enforcing policy "
                f"{header.policy_sha256 or '(none)'}, "
                f"but the global holds {installed.label} {installed.sha256}: both sides must run the same "
                "signed version"
            )

    # --- the round loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run the planned rounds, then mark the federation finished."""
        self._await_jurisdictions(stop)
        for number in range(self._first_round, self._plan.rounds + 1):
            if stop.is_set():
                return
            self._run_round(number, stop)
        with self._changed:
            self._state = RoundState.FINISHED
            self._changed.notify_all()
        log.info("federation finished", extra={"rounds": self._plan.rounds})

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can drain promptly."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def snapshot(self) -> GlobalSnapshot:
        with self._changed:
            return GlobalSnapshot(
                current_round=self._round.number if self._round is not None else 0,
                state=self._state,
                jurisdictions=tuple(sorted(self._regionals)),
                rounds=tuple(self._history),
                contributions=tuple(self._contributions),
                refusals=tuple(self._refusals),
            )

    def _await_jurisdictions(self, stop: threading.Event) -> None:
        give_up = time.monotonic() + self._plan.start_timeout_s
        with self._changed:
            while len(self._regionals) < self._plan.expected_jurisdictions and not stop.is_set():
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "starting without every expected jurisdiction",
                        extra={
                            "registered": sorted(self._regionals),
                            "expected": self._plan.expected_jurisdictions,
                        },
                    )
                    return
                self._changed.wait(min(remaining, 0.5))

    def _run_round(self, number: int, stop: threading.Event) -> None:
        """One round, traced as one span every participant's work joins (via `traceparent`)."""
        span = self._instruments.tracer.start_span(SpanName.ROUND, attributes={Attribute.ROUND: number})
        try:
            outcome = self._open_and_close(number, stop, traceparent(span))
            span.set_attribute(Attribute.OUTCOME, outcome.value)
        finally:
            span.end()

    def _open_and_close(self, number: int, stop: threading.Event, trace_context: str) -> RoundOutcome:
        opened = OpenRound.start(
            number,
            self._spec,
            self._plan.training,
            self._model,
            self._plan.round_deadline_s,
            allowed_encodings=frozenset({_ENCODINGS[self._plan.upstream_compression]}),
            max_concurrent=MAX_CONCURRENT_AGGREGATES,
            base_sha256=self._model_sha256,
            global_location=self._guard.location or "",
            upstream_compression=self._plan.upstream_compression,
            traceparent=trace_context,
        )
        intake = opened.intake
        with self._changed:
            self._declined.clear()
            self._round = opened
            self._state = RoundState.OPEN
            self._changed.notify_all()
            log.info("round opened", extra={"round": number, "jurisdictions": sorted(self._regionals)})
            while not stop.is_set():
                remaining = opened.deadline - time.monotonic()
                done = len(intake.contributors)
                settled = done + len(self._declined - set(intake.contributors))
                everyone_settled = settled >= len(self._regionals)
                if remaining <= 0 or (
                    everyone_settled and (done >= self._plan.min_jurisdictions or self._declined)
                ):
                    break
                self._changed.wait(min(remaining, 0.5))
        return self._close(opened)

    def _close(self, opened: OpenRound) -> RoundOutcome:
        mean = opened.intake.close()
        cohort = opened.intake.contributors
        quorum_met = mean is not None and len(cohort) >= self._plan.min_jurisdictions
        self._record(
            EventKind.GATE,
            self.identity.jurisdiction,
            round_number=opened.number,
            decision=Decision.PASS if quorum_met else Decision.FAIL,
            details={
                Detail.METRIC: "jurisdiction quorum",
                Detail.VALUE: len(cohort),
                Detail.THRESHOLD: self._plan.min_jurisdictions,
            },
        )
        result = RoundOutcome.ABORTED
        if mean is None or not quorum_met:
            outcome = (
                f"aborted: quorum not met ({len(cohort)} of {self._plan.min_jurisdictions} jurisdictions)"
            )
            model_sha = self._model_sha256
        else:
            result = RoundOutcome.COMMITTED
            model = add(opened.base, mean)
            info = self._store.save(opened.number, self._spec, model)
            self._record(
                EventKind.COMMIT,
                self.identity.jurisdiction,
                round_number=opened.number,
                digests={"model": info.sha256},
                details={Detail.CHECKPOINT_VERSION: info.version, Detail.COHORT_SIZE: len(cohort)},
            )
            outcome, model_sha = "committed", info.sha256
            with self._changed:
                self._model, self._model_sha256 = model, model_sha
        summary = RoundSummary(
            round=opened.number,
            outcome=outcome,
            participants=tuple(sorted(cohort)),
            example_total=int(opened.intake.total_weight),
            bytes_received=opened.intake.bytes_received,
            float32_bytes_equivalent=self._spec.float32_bytes * len(cohort),
            wall_time_s=time.monotonic() - opened.started,
            model_sha256=model_sha,
            rejections=opened.intake.rejections,
        )
        with self._changed:
            self._history.append(summary)
            selected = len(self._regionals)
            self._changed.notify_all()
        self._instruments.metrics.round_closed(
            outcome=result, duration_s=summary.wall_time_s, selected=selected, participants=len(cohort)
        )
        log.info(
            "round closed", extra={"round": opened.number, "outcome": outcome, "jurisdictions": list(cohort)}
        )
        return result

    def _record(self, kind: EventKind, jurisdiction: str, **fields: Any) -> None:
        self._audit.record(AuditEvent(kind=kind, actor=self.identity, jurisdiction=jurisdiction, **fields))

    def _open_round(self, round_number: int) -> OpenRound:
        with self._changed:
            current = self._round
        if current is None or current.number != round_number or not current.intake.is_open:
            open_now = current.number if current is not None and current.intake.is_open else "none"
            raise WrongState(f"round {round_number} is not open; the open round is {open_now}")
        return current

    def _check_registered(self, peer: Identity) -> None:
        require_tier(peer, Tier.REGIONAL, "take part in global rounds")
        with self._changed:
            known = self._regionals.get(peer.jurisdiction)
        if known is None or known.node != peer.node:
            raise WrongState(f"regional {peer} must register before anything else")
