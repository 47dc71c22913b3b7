"""The regional aggregator's silo side: its registered silos, the long poll, downloads and updates.

A SiloDesk holds what silos and the upstream loop share in memory, under one condition: the
registered silos, the open local round (and the model spec of the latest one), and whether the
federation finished or the server is stopping. Through it a silo of this jurisdiction registers,
long-polls for its task (an excluded silo is told why, once), downloads the round's base model
or the jurisdiction's personalized model (each allowed by the policy first), and uploads its
update: signature verified as the chunks arrive, stored and recorded before it is folded, every
acceptance and refusal in the audit log and refusals also in the state file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import Board, wait_for_announcement
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind, refusal_reason
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.roles import require_tier
from jurisfed.auth.signatures import StreamSignature
from jurisfed.eligibility import Excluded
from jurisfed.errors import InvalidInput, JurisfedError, NotAllowed, NotFound, WrongState
from jurisfed.modeling.mlp import Mlp
from jurisfed.participation import record_refusal
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Endpoint, Flow
from jurisfed.rounds import RoundAnnouncement, RoundState, UpdateHeader
from jurisfed.store.blobs import BlobStore
from jurisfed.store.silo_registry import SiloRecord
from jurisfed.store.tier_state import TierState
from jurisfed.telemetry import Direction, Hop, Instrumentation
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2
from regional.closing import RoundRecorder
from regional.local_round import LocalRound
from regional.personalization import ServedModels

log = logging.getLogger("jurisfed.regional")


class SiloDesk:
    def __init__(
        self,
        identity: Identity,
        guard: PolicyGuard,
        state: TierState,
        blobs: BlobStore,
        served: ServedModels,
        outliers: OutlierHandling,
        recorder: RoundRecorder,
        audit: AuditSink,
        instruments: Instrumentation,
    ) -> None:
        self.identity = identity
        self.guard = guard
        self.instruments = instruments
        self._state = state
        self._blobs = blobs
        self._served = served
        self._outliers = outliers
        self._recorder = recorder
        self._audit = audit
        # Guarded by `changed`, which every change to them notifies:
        self.changed = threading.Condition()
        self.silos: dict[str, SiloRecord] = {s.silo_id: s for s in state.registry.silos()}
        self.round: LocalRound | None = None
        self.spec: ModelSpec | None = None  # of the latest round: the personalized models'
        self.finished = False
        self.stopping = False

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.of(self.identity, self.guard.location)

    def register_silo(self, peer: Identity, example_count: int, schema_sha256: str, code_version: str) -> str:
        self._check_own_silo(peer)
        self.guard.require(Flow(Artifact.TELEMETRY, Endpoint.of(peer), self.endpoint), subject=peer)
        if example_count < 1:
            raise InvalidInput(f"a silo must hold at least one example, {peer.node} declared {example_count}")
        record = self._state.registry.register_silo(peer.node, example_count, schema_sha256, code_version)
        self._record(
            EventKind.SILO_REGISTERED,
            subject=peer,
            details={Detail.EXAMPLE_COUNT: example_count, Detail.CODE_VERSION: code_version or "unknown"},
        )
        with self.changed:
            self.silos[peer.node] = record
            local = self.round
            excluded = local.admit(record) if local is not None and local.opened.intake.is_open else None
            self.changed.notify_all()
        if excluded is not None and local is not None:
            self.exclude(local.number, excluded)
        log.info("silo registered", extra={"silo": peer.node, "examples": example_count})
        return peer.node

    def wait_for_task(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        self._check_registered(peer)
        silo = peer.node
        answer = wait_for_announcement(self.changed, lambda: self._board(silo), after_round, max_wait_s)
        with self.changed:
            local = self.round
            if (
                local is not None
                and answer.state is RoundState.WAITING
                and silo in local.excluded
                and local.opened.intake.is_open
            ):
                local.told.add(silo)
                return local.exclusion_answer(silo, answer)
        return answer

    def _board(self, silo: str) -> Board:
        local = self.round
        if local is None or silo not in local.excluded:
            return Board(local.opened if local is not None else None, self.finished, self.stopping)
        notice = None
        if silo not in local.told and local.opened.intake.is_open:
            waiting = RoundAnnouncement(RoundState.WAITING, local.number, None, None, 0.0, "")
            notice = local.exclusion_answer(silo, waiting)
        return Board(None, self.finished, self.stopping, notice)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        """The round's model, to a silo selected for it, or to a stale one fetching it to rejoin."""
        self._check_registered(peer)
        local = self._open_round(round_number)
        excluded = local.excluded.get(peer.node)
        if excluded is not None and excluded.reason.value != "stale":
            raise WrongState(f"{peer.node} takes no part in round {round_number}: {excluded.sentence}")
        self._require_downlink(Artifact.MODEL_CHECKPOINT, peer, round_number)
        record = self._state.registry.mark_synced(peer.node, round_number)
        with self.changed:
            self.silos[peer.node] = record
        return local.opened.spec, local.opened.base

    def personalized_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        """The jurisdiction's model of `round_number` (0: the newest), only for its own silos: the
        mixture chosen on the validation set when the regional holds one, else its own model."""
        self._check_registered(peer)
        head = self._state.head()
        if head is None:
            raise NotFound("no personalized model has been committed yet")
        version = round_number or head.version
        try:
            checkpoint = self._state.checkpoint(version)
        except NotFound:
            committed = [c.version for c in self._state.checkpoints()]
            raise NotFound(
                f"no personalized model for round {version}; committed rounds: {committed}"
            ) from None
        spec = self.spec_of(checkpoint.architecture)
        self._require_downlink(Artifact.PERSONALIZED_MODEL, peer, version)
        served = self._served.served(version)  # the mixture chosen on validation, if there is one
        return spec, self._blobs.get_weights(served.blob_sha256 if served else checkpoint.blob_sha256, spec)

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
            self._record_refusal(peer, header.round, error)
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
        self._outliers.refuse_if_quarantined(peer.node)
        local = self._open_round(header.round)
        excluded = local.excluded.get(peer.node)
        if excluded is not None:
            raise WrongState(f"{peer.node} takes no part in round {header.round}: {excluded.sentence}")
        opened = local.opened

        def keep(update: Weights) -> bool:
            """Store the update and record it before it is folded."""
            content = self._blobs.put_weights(opened.spec, update)
            return self._state.record_contribution(
                header.round,
                peer.node,
                header.idempotency_key,
                content,
                header.example_count,
                bytes_received=meter.total_bytes,
                float32_bytes=opened.spec.float32_bytes,
            ).new

        try:
            receipt = opened.intake.receive(
                peer.node, header.idempotency_key, float(header.example_count), chunks, keep=keep
            )
        finally:
            opened.intake.count_bytes(meter.total_bytes)
            self.instruments.metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.RECEIVED, meter.total_bytes)
        with self.changed:
            self.changed.notify_all()
        return receipt

    def _record_refusal(self, peer: Identity, round_number: int, error: JurisfedError) -> None:
        """A refused update of a registered silo: in the state file."""
        with self.changed:
            registered = peer.node in self.silos and peer.jurisdiction == self.identity.jurisdiction
            local = self.round
        if registered:
            open_round = local.number if local is not None else None
            record_refusal(self._state, peer.node, round_number, error, open_round=open_round)

    def exclude(self, number: int, excluded: Excluded) -> None:
        self._recorder.exclude(number, excluded)

    def spec_of(self, architecture: str) -> ModelSpec:
        """The shapes of model `architecture`: the latest round's spec, or parsed from its name."""
        with self.changed:
            if self.spec is not None and self.spec.architecture == architecture:
                return self.spec
        try:
            return Mlp.parse(architecture).spec()
        except ValueError as error:
            raise NotFound(f"the shapes of model {architecture!r} are not known here: {error}") from None

    def _record(self, kind: EventKind, **fields: Any) -> None:
        self._audit.record(
            AuditEvent(kind=kind, actor=self.identity, jurisdiction=self.identity.jurisdiction, **fields)
        )

    def _open_round(self, round_number: int) -> LocalRound:
        with self.changed:
            local = self.round
        if local is None:
            raise WrongState(f"round {round_number} is not open; no round has started yet")
        if local.number != round_number:
            raise WrongState(f"round {round_number} is not open; the open round is {local.number}")
        return local

    def _check_own_silo(self, peer: Identity) -> None:
        require_tier(peer, Tier.SILO, "use a regional aggregator's silo service")
        if peer.jurisdiction != self.identity.jurisdiction:
            raise NotAllowed(
                f"silo {peer.node} belongs to jurisdiction {peer.jurisdiction}; "
                f"this regional serves only {self.identity.jurisdiction}"
            )

    def _check_registered(self, peer: Identity) -> SiloRecord:
        self._check_own_silo(peer)
        with self.changed:
            record = self.silos.get(peer.node)
        if record is None:
            raise WrongState(f"silo {peer.node} must register before anything else")
        return record
