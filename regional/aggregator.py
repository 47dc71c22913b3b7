"""The regional aggregator's state: its silos, the open local round and the rounds behind it.

The servicer (silo side) and the upstream loop (global side) both act through this class; it
holds no gRPC objects. A local round opens when the global announces one, takes silo updates
until every registered silo has contributed or the local deadline passes, and then either
commits (quorum met: the mean delta becomes the jurisdiction's personalized model and is
handed upstream) or aborts with a reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import Board, OpenRound, wait_for_announcement
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind, refusal_reason
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.roles import require_tier
from jurisfed.auth.signatures import StreamSignature
from jurisfed.errors import InvalidInput, JurisfedError, NotAllowed, NotFound, WrongState
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Endpoint, Flow
from jurisfed.rounds import RoundAnnouncement, RoundSummary, TrainingConfig, UpdateHeader
from jurisfed.store.checkpoints import CheckpointStore
from jurisfed.telemetry import Direction, Hop, Instrumentation, RoundOutcome
from jurisfed.tensors import ModelSpec, Weights, add
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2

log = logging.getLogger("jurisfed.regional")


@dataclass(frozen=True)
class SiloRecord:
    silo_id: str
    example_count: int
    schema_sha256: str
    code_version: str


@dataclass(frozen=True)
class ClosedRound:
    number: int
    mean_delta: Weights | None  # None when the round aborted
    cohort_size: int
    example_total: int
    reason: str


class RegionalAggregator:
    def __init__(
        self,
        identity: Identity,
        store: CheckpointStore,
        *,
        min_silos: int,
        max_concurrent_uploads: int,
        audit: AuditSink,
        guard: PolicyGuard,
        instruments: Instrumentation | None = None,
    ) -> None:
        self.identity = identity
        self.guard = guard
        self.instruments = instruments or Instrumentation.off()
        self._audit = audit
        self._personalized = store
        self._min_silos = min_silos
        self._max_concurrent = max_concurrent_uploads
        self._silos: dict[str, SiloRecord] = {}
        self._round: OpenRound | None = None
        self._history: list[RoundSummary] = []
        self._finished = False
        self._stopping = False
        self._changed = threading.Condition()

    @property
    def jurisdiction(self) -> str:
        return self.identity.jurisdiction

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.of(self.identity, self.guard.location)

    # --- silo side -------------------------------------------------------------------------

    def register_silo(self, peer: Identity, example_count: int, schema_sha256: str, code_version: str) -> str:
        self._check_own_silo(peer)
        self.guard.require(Flow(Artifact.TELEMETRY, Endpoint.of(peer), self.endpoint), subject=peer)
        if example_count < 1:
            raise InvalidInput(f"a silo must hold at least one example, {peer.node} declared {example_count}")
        with self._changed:
            self._silos[peer.node] = SiloRecord(peer.node, example_count, schema_sha256, code_version)
            self._changed.notify_all()
        self._record(
            EventKind.SILO_REGISTERED,
            subject=peer,
            details={Detail.EXAMPLE_COUNT: example_count, Detail.CODE_VERSION: code_version or "unknown"},
        )
        log.info("silo registered", extra={"silo": peer.node, "examples": example_count})
        return peer.node

    def wait_for_task(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        self._check_registered(peer)
        return wait_for_announcement(self._changed, self._board, after_round, max_wait_s)

    def _board(self) -> Board:
        return Board(self._round, self._finished, self._stopping)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        self._check_registered(peer)
        current = self._open_round(round_number)
        self._require_downlink(Artifact.MODEL_CHECKPOINT, peer, round_number)
        return current.spec, current.base

    def personalized_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        """The jurisdiction's model of `round_number` (0: the newest); only for its own silos."""
        self._check_registered(peer)
        with self._changed:
            committed = [s.round for s in self._history if s.outcome == "committed"]
            spec = self._round.spec if self._round is not None else None
        if not committed or spec is None:
            raise NotFound("no personalized model has been committed yet")
        version = round_number or committed[-1]
        if version not in committed:
            raise NotFound(f"no personalized model for round {version}; committed rounds: {committed}")
        self._require_downlink(Artifact.PERSONALIZED_MODEL, peer, version)
        return spec, self._personalized.load(version, spec)

    def _require_downlink(self, artifact: Artifact, peer: Identity, round_number: int) -> None:
        flow = Flow(artifact, self.endpoint, Endpoint.of(peer))
        self.guard.require(flow, round_number=round_number, subject=peer)

    def submit_update(
        self,
        peer: Identity,
        header: UpdateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
    ) -> Receipt:
        """Take a silo's update; its signature is verified as the chunks arrive and recorded."""
        signature = StreamSignature(header.round, peer, certificate_pem, header.content_signature)
        try:
            receipt = self._take_update(peer, header, signature.wrap(chunks), meter)
        except JurisfedError as error:
            self._record(
                EventKind.UPDATE_RECEIVED,
                round_number=header.round,
                subject=peer,
                decision=Decision.DENY,
                details={Detail.REASON: refusal_reason(error), Detail.BYTES: meter.total_bytes},
            )
            raise
        if not receipt.duplicate:
            digests, evidence = signature.evidence()
            self._record(
                EventKind.UPDATE_RECEIVED,
                round_number=header.round,
                subject=peer,
                decision=Decision.ALLOW,
                digests=digests,
                details={
                    Detail.EXAMPLE_COUNT: header.example_count,
                    Detail.BYTES: meter.total_bytes,
                    **evidence,
                },
            )
        return receipt

    def _take_update(
        self, peer: Identity, header: UpdateHeader, chunks: Iterable[tensors_pb2.TensorChunk], meter: Meter
    ) -> Receipt:
        record = self._check_registered(peer)
        flow = Flow(Artifact.MODEL_UPDATE, Endpoint.of(peer), self.endpoint)
        self.guard.require(flow, round_number=header.round, subject=peer)
        if header.example_count > record.example_count:
            raise InvalidInput(
                f"update claims {header.example_count} examples; "
                f"{peer.node} registered {record.example_count}"
            )
        current = self._open_round(header.round)
        try:
            receipt = current.intake.receive(
                peer.node, header.idempotency_key, float(header.example_count), chunks
            )
        finally:
            current.intake.count_bytes(meter.total_bytes)
            self.instruments.metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.RECEIVED, meter.total_bytes)
        with self._changed:
            self._changed.notify_all()
        return receipt

    def forwarded(self, closed: ClosedRound, compression: str) -> None:
        """Record that this round's aggregate crossed to the global aggregator."""
        self._record(
            EventKind.AGGREGATE_SENT,
            round_number=closed.number,
            details={
                Detail.COHORT_SIZE: closed.cohort_size,
                Detail.EXAMPLE_COUNT: closed.example_total,
                Detail.COMPRESSION: compression,
            },
        )

    def declined(self, number: int, reason: str) -> None:
        """Record a round this regional's policy refused to run, for `round status`."""
        summary = RoundSummary(
            round=number,
            outcome=f"declined: {reason}",
            participants=(),
            example_total=0,
            bytes_received=0,
            float32_bytes_equivalent=0,
            wall_time_s=0.0,
            model_sha256="",
        )
        with self._changed:
            self._history.append(summary)
            self._changed.notify_all()

    # --- upstream side -----------------------------------------------------------------------

    def open_round(
        self,
        number: int,
        spec: ModelSpec,
        training: TrainingConfig,
        base: Weights,
        deadline_in_s: float,
        *,
        local_layers: tuple[str, ...] = (),
        traceparent: str = "",
    ) -> None:
        """Open the local round on the global `base`, with this jurisdiction's own `local_layers`.

        Layers the policy keeps local never come from the global aggregator: the round starts
        from the jurisdiction's latest personalized values of them (FedPer), once there are any.
        """
        local = OpenRound.start(
            number,
            spec,
            training,
            self._with_local_layers(spec, base, local_layers),
            deadline_in_s,
            allowed_encodings=frozenset({tensors_pb2.ENCODING_RAW}),
            max_concurrent=self._max_concurrent,
            traceparent=traceparent,
        )
        with self._changed:
            self._round = local
            self._changed.notify_all()
        log.info("round opened", extra={"round": number, "deadline_s": round(deadline_in_s, 1)})

    def _with_local_layers(self, spec: ModelSpec, base: Weights, local_layers: tuple[str, ...]) -> Weights:
        with self._changed:
            committed = [s.round for s in self._history if s.outcome == "committed"]
        if not local_layers or not committed:
            return base
        own = self._personalized.load(committed[-1], spec)
        return {name: own[name] if name in local_layers else values for name, values in base.items()}

    def registered_silos(self) -> int:
        with self._changed:
            return len(self._silos)

    def wait_for_quorum_of_silos(self, stop: threading.Event) -> None:
        """Block until at least `min_silos` silos registered: before that no round could commit."""
        with self._changed:
            while len(self._silos) < self._min_silos and not stop.is_set():
                self._changed.wait(0.5)

    def wait_for_close(self, stop: threading.Event) -> ClosedRound:
        """Block until every registered silo contributed, the deadline passed or `stop` is set."""
        with self._changed:
            current = self._round
            if current is None:
                raise WrongState("no local round is open")
            while not stop.is_set():
                remaining = current.deadline - time.monotonic()
                done = len(current.intake.contributors)
                if remaining <= 0 or (done >= len(self._silos) and done >= self._min_silos):
                    break
                self._changed.wait(min(remaining, 0.5))
        return self._close(current)

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can drain promptly."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def history(self) -> list[RoundSummary]:
        with self._changed:
            return list(self._history)

    def silos(self) -> list[str]:
        with self._changed:
            return sorted(self._silos)

    def current_round(self) -> int:
        with self._changed:
            return self._round.number if self._round is not None else 0

    # --- internals ---------------------------------------------------------------------------

    def _close(self, current: OpenRound) -> ClosedRound:
        mean = current.intake.close()
        cohort = current.intake.contributors
        examples = int(current.intake.total_weight)
        quorum_met = mean is not None and len(cohort) >= self._min_silos
        self._record(
            EventKind.GATE,
            round_number=current.number,
            decision=Decision.PASS if quorum_met else Decision.FAIL,
            details={
                Detail.METRIC: "silo quorum",
                Detail.VALUE: len(cohort),
                Detail.THRESHOLD: self._min_silos,
            },
        )
        if mean is None or not quorum_met:
            reason = f"aborted: quorum not met ({len(cohort)} of {self._min_silos} silos)"
            model_sha = ""
            mean = None
        else:
            reason = "committed"
            personalized = add(current.base, mean)
            model_sha = self._personalized.save(current.number, current.spec, personalized).sha256
        summary = RoundSummary(
            round=current.number,
            outcome=reason,
            participants=tuple(sorted(cohort)),
            example_total=examples,
            bytes_received=current.intake.bytes_received,
            float32_bytes_equivalent=current.spec.float32_bytes * len(cohort),
            wall_time_s=time.monotonic() - current.started,
            model_sha256=model_sha,
            rejections=current.intake.rejections,
        )
        with self._changed:
            self._history.append(summary)
            registered = len(self._silos)
            self._changed.notify_all()
        self.instruments.metrics.round_closed(
            outcome=RoundOutcome.COMMITTED if mean is not None else RoundOutcome.ABORTED,
            duration_s=summary.wall_time_s,
            selected=registered,
            participants=len(cohort),
        )
        log.info("round closed", extra={"round": current.number, "outcome": reason, "silos": len(cohort)})
        return ClosedRound(current.number, mean, len(cohort), examples, reason)

    def _record(self, kind: EventKind, **fields: Any) -> None:
        self._audit.record(
            AuditEvent(kind=kind, actor=self.identity, jurisdiction=self.jurisdiction, **fields)
        )

    def _open_round(self, round_number: int) -> OpenRound:
        with self._changed:
            current = self._round
        if current is None:
            raise WrongState(f"round {round_number} is not open; no round has started yet")
        if current.number != round_number:
            raise WrongState(f"round {round_number} is not open; the open round is {current.number}")
        return current

    def _check_own_silo(self, peer: Identity) -> None:
        require_tier(peer, Tier.SILO, "use a regional aggregator's silo service")
        if peer.jurisdiction != self.jurisdiction:
            raise NotAllowed(
                f"silo {peer.node} belongs to jurisdiction {peer.jurisdiction}; "
                f"this regional serves only {self.jurisdiction}"
            )

    def _check_registered(self, peer: Identity) -> SiloRecord:
        self._check_own_silo(peer)
        with self._changed:
            record = self._silos.get(peer.node)
        if record is None:
            raise WrongState(f"silo {peer.node} must register before anything else")
        return record
