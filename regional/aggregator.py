"""The regional aggregator's state: its silos, the open local round and the rounds behind it.

The servicer (silo side) and the upstream loop (global side) both act through this class; it
holds no gRPC objects. A local round opens when the global announces one under a verified
contract, decides which registered silos take part (local_round.py: eligibility, cohort size),
takes the selected silos' updates until each of them has contributed or the local deadline
passes, and then commits (quorum met: the mean delta becomes the jurisdiction's personalized
model and is handed upstream) or aborts with a reason.

What must outlive the process is in `state_dir`: a TierState (state.sqlite: the silo registry
with each silo's last synced round, rounds, contributions, exclusions and dropouts, the
personalized models' checkpoints) and a BlobStore (blobs/: personalized models, the base of
each round, its contract, every update received). An update is stored and recorded before it
is folded, so a regional killed mid-round and restarted finds the round on disk, folds the
recorded updates again and goes on with it if the global still has it open (`take_over`), or
aborts it with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import Board, OpenRound, wait_for_announcement
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind, refusal_reason
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.roles import require_tier
from jurisfed.auth.signatures import StreamSignature
from jurisfed.eligibility import Excluded, ExclusionReason
from jurisfed.errors import InvalidInput, JurisfedError, NotAllowed, NotFound, WrongState
from jurisfed.modeling.evaluation import MlpProbe
from jurisfed.modeling.mlp import Mlp
from jurisfed.participation import record_refusal
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Endpoint, Flow, PrivacySpend
from jurisfed.policy.model import Decision as PolicyDecision
from jurisfed.privacy.ledger import PrivacyLedger
from jurisfed.round_contract import RoundContract
from jurisfed.rounds import (
    LeftOutEntry,
    RoundAnnouncement,
    RoundState,
    RoundSummary,
    TrainingConfig,
    UpdateHeader,
)
from jurisfed.store.blobs import BlobStore
from jurisfed.store.history import left_out_entry, read_history, summary
from jurisfed.store.silo_registry import SiloRecord
from jurisfed.store.tier_state import RoundStatus, TierState
from jurisfed.telemetry import Direction, Hop, Instrumentation
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2
from regional.closing import ClosedRound, RoundRecorder
from regional.local_round import LocalRound, RoundTerms
from regional.personalization import Personalizer, ServedModels
from regional.privacy_budget import PrivacyBudget

log = logging.getLogger("jurisfed.regional")

STATE_FILE = "state.sqlite"
BLOB_DIR = "blobs"


class RegionalAggregator:
    def __init__(
        self,
        identity: Identity,
        state_dir: Path,
        *,
        min_silos: int,
        max_concurrent_uploads: int,
        audit: AuditSink,
        guard: PolicyGuard,
        instruments: Instrumentation | None = None,
        personalizer: Personalizer | None = None,
    ) -> None:
        self.identity = identity
        self.guard = guard
        self.instruments = instruments or Instrumentation.off()
        self._audit = audit
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state = TierState(state_dir / STATE_FILE)
        self._blobs = BlobStore(state_dir / BLOB_DIR)
        self._min_silos = min_silos
        self._max_concurrent = max_concurrent_uploads
        self._silos: dict[str, SiloRecord] = {s.silo_id: s for s in self._state.registry.silos()}
        self._round: LocalRound | None = None
        self._spec: ModelSpec | None = None  # of the latest round: the personalized models'
        self._restored = False  # the open round was found on disk at start, not opened by this process
        self._outliers = OutlierHandling(
            identity,
            QuarantineRegistry(state_dir / STATE_FILE),
            audit,
            self.instruments,
            identity_of=lambda silo: Identity(identity.jurisdiction, Tier.SILO, silo),
            jurisdiction_of=lambda silo: identity.jurisdiction,
        )
        self._rule_states = RuleStates(state_dir / STATE_FILE)
        self._privacy = PrivacyBudget(
            PrivacyLedger(state_dir / STATE_FILE), guard, self.instruments, audit, identity
        )
        self._global_location: str | None = None  # where the global says it is hosted, once it said so
        self._served = ServedModels(state_dir / STATE_FILE)
        self._personalizer = personalizer
        self._recorder = RoundRecorder(
            identity,
            self._state,
            self._blobs,
            audit,
            self.instruments,
            self._outliers,
            self._rule_states,
            self._served,
            personalizer,
        )
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
        record = self._state.registry.register_silo(peer.node, example_count, schema_sha256, code_version)
        self._record(
            EventKind.SILO_REGISTERED,
            subject=peer,
            details={Detail.EXAMPLE_COUNT: example_count, Detail.CODE_VERSION: code_version or "unknown"},
        )
        with self._changed:
            self._silos[peer.node] = record
            local = self._round
            excluded = local.admit(record) if local is not None and local.opened.intake.is_open else None
            self._changed.notify_all()
        if excluded is not None and local is not None:
            self._exclude(local.number, excluded)
        log.info("silo registered", extra={"silo": peer.node, "examples": example_count})
        return peer.node

    def wait_for_task(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        self._check_registered(peer)
        silo = peer.node
        answer = wait_for_announcement(self._changed, lambda: self._board(silo), after_round, max_wait_s)
        with self._changed:
            local = self._round
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
        local = self._round
        if local is None or silo not in local.excluded:
            return Board(local.opened if local is not None else None, self._finished, self._stopping)
        notice = None
        if silo not in local.told and local.opened.intake.is_open:
            waiting = RoundAnnouncement(RoundState.WAITING, local.number, None, None, 0.0, "")
            notice = local.exclusion_answer(silo, waiting)
        return Board(None, self._finished, self._stopping, notice)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        """The round's model, to a silo selected for it, or to a stale one fetching it to rejoin."""
        self._check_registered(peer)
        local = self._open_round(round_number)
        excluded = local.excluded.get(peer.node)
        if excluded is not None and excluded.reason.value != "stale":
            raise WrongState(f"{peer.node} takes no part in round {round_number}: {excluded.sentence}")
        self._require_downlink(Artifact.MODEL_CHECKPOINT, peer, round_number)
        record = self._state.registry.mark_synced(peer.node, round_number)
        with self._changed:
            self._silos[peer.node] = record
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
        spec = self._spec_of(checkpoint.architecture)
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
        with self._changed:
            self._changed.notify_all()
        return receipt

    def _record_refusal(self, peer: Identity, round_number: int, error: JurisfedError) -> None:
        """A refused update of a registered silo: in the state file."""
        with self._changed:
            registered = peer.node in self._silos and peer.jurisdiction == self.jurisdiction
            local = self._round
        if registered:
            open_round = local.number if local is not None else None
            record_refusal(self._state, peer.node, round_number, error, open_round=open_round)

    def forwarded(self, closed: ClosedRound, compression: str) -> None:
        """Record that this round's aggregate crossed to the global aggregator."""
        self._record(
            EventKind.AGGREGATE_SENT,
            round_number=closed.number,
            details={
                Detail.COHORT_SIZE: closed.cohort_size,
                Detail.EXAMPLE_COUNT: closed.example_total,
                **(
                    {Detail.DP_EPSILON: closed.privacy.epsilon, Detail.DP_DELTA: closed.privacy.delta}
                    if closed.privacy is not None
                    else {}
                ),
                Detail.COMPRESSION: compression,
            },
        )

    def contract_decision(self, number: int, contract_sha256: str, refusal: str | None) -> None:
        """Record, in the audit log, that the round's contract verified (refusal None) or why not."""
        self._record(
            EventKind.CONTRACT_DECISION,
            round_number=number,
            decision=Decision.ALLOW if refusal is None else Decision.DENY,
            rule="round-contract",
            digests={"contract": contract_sha256},
            details={Detail.REASON: refusal[:900]} if refusal is not None else {},
        )

    def declined(self, number: int, contract_sha256: str, base_sha256: str, reason: str) -> None:
        """Record a round this regional refused to run (its policy, or a contract that did not verify)."""
        self.abandon(f"round {number} was announced")
        try:
            self._state.open_round(number, contract_sha256, base_sha256)
            self._state.close_round(number, RoundStatus.ABORTED, f"declined: {reason}")
        except WrongState as error:  # announced again after a restart: already recorded
            log.info("declined round already recorded", extra={"round": number, "why": str(error)})
        with self._changed:
            self._changed.notify_all()

    # --- upstream side -----------------------------------------------------------------------

    def privacy_refusal(self, contract: RoundContract, global_location: str) -> PolicyDecision | None:
        """Before running a round: the decision declining it if its DP release would exceed this
        jurisdiction's budget (privacy_budget.py); None when it fits or adds no noise."""
        self._global_location = global_location
        return self._privacy.refusal(contract, global_location)

    def privacy_spend(self, contract: RoundContract, global_location: str) -> PrivacySpend | None:
        """The DP spend the export decision reads: this round counted, over the policy's period."""
        return self._privacy.spend(contract, global_location)

    def open_round(
        self,
        number: int,
        spec: ModelSpec,
        training: TrainingConfig,
        base: Weights,
        deadline_in_s: float,
        *,
        terms: RoundTerms,
        local_layers: tuple[str, ...] = (),
        traceparent: str = "",
    ) -> None:
        """Open the local round on the global `base`, with this jurisdiction's own `local_layers`,
        under the `terms` of its verified contract, and decide which silos take part.

        Layers the policy keeps local never come from the global aggregator: the round starts
        from the jurisdiction's latest personalized values of them (FedPer), once there are any.
        """
        self.abandon(f"round {number} was announced")
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
        local = LocalRound(
            opened,
            terms,
            quorum=max(self._min_silos, terms.min_silos),
            global_base_sha256=self._blobs.put_weights(spec, base) if self._personalizer is not None else "",
            quarantined=self._outliers.active(),
        )
        with self._changed:
            excluded = local.select(list(self._silos.values()))
            self._round, self._spec, self._restored = local, spec, False
            self._changed.notify_all()
        for exclusion in excluded:
            self._exclude(number, exclusion)
        log.info(
            "round opened",
            extra={
                "round": number,
                "deadline_s": round(deadline_in_s, 1),
                "selected": sorted(local.selected),
                "excluded": {e.silo_id: str(e.reason) for e in excluded},
            },
        )

    def resume(self) -> int | None:
        """At start, before serving: reopen the round a crash interrupted, its recorded updates folded
        again (the global decides, via `take_over`, whether it goes on). Its number, or None."""
        began = time.monotonic()
        resumption = self._state.resume()
        record = resumption.in_flight
        if record is None:
            return None
        try:
            contract = RoundContract.from_canonical_json(self._blobs.get(record.contract_sha256))
            spec = self._spec_of(contract.base.architecture)
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
        with self._changed:
            fresh = [e for e in local.select(list(self._silos.values())) if e.silo_id not in recorded]
            for silo_id, exclusion in recorded.items():  # decisions recorded before the crash stand
                local.selected.discard(silo_id)
                local.excluded[silo_id] = exclusion
            local.selected |= {c.participant for c in resumption.contributions}
            self._round, self._spec, self._restored = local, spec, True
        for exclusion in fresh:
            self._exclude(record.number, exclusion)
        log.info(
            "round resumed after a restart",
            extra={
                "round": record.number,
                "contributions": [c.participant for c in resumption.contributions],
                "remaining_s": round(remaining_s, 1),
                "resume_s": round(time.monotonic() - began, 3),
            },
        )
        return record.number

    def take_over(self, number: int, contract_sha256: str) -> bool:
        """Whether the round resumed at start is round `number` under that contract (go on with it)."""
        with self._changed:
            local = self._round
            restored = self._restored and local is not None and local.opened.intake.is_open
            if (
                restored
                and local is not None
                and (local.number, local.terms.contract_sha256)
                == (
                    number,
                    contract_sha256,
                )
            ):
                self._restored = False
                return True
        self.abandon(f"round {number} was announced")
        return False

    def ran(self, number: int) -> bool:
        """Whether round `number` was already run (or declined) here, other than a round resumed at start."""
        with self._changed:
            local = self._round
            if self._restored and local is not None and local.number == number:
                return False
        try:
            self._state.round(number)
        except NotFound:
            return False
        return True

    def abandon(self, why: str) -> None:
        """Abort a round resumed at start that the global no longer runs (nothing forwarded)."""
        with self._changed:
            local = self._round
            if not (self._restored and local is not None and local.opened.intake.is_open):
                return
            self._restored = False
        local.opened.intake.close()
        self._state.close_round(
            local.number,
            RoundStatus.ABORTED,
            f"aborted: the global closed it while this regional was down ({why})",
        )
        log.warning("resumed round abandoned", extra={"round": local.number, "why": why})

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

    def registered_silos(self) -> int:
        with self._changed:
            return len(self._silos)

    def wait_for_quorum_of_silos(self, stop: threading.Event) -> None:
        """Block until at least `min_silos` silos registered: before that no round could commit."""
        with self._changed:
            while len(self._silos) < self._min_silos and not stop.is_set():
                self._changed.wait(0.5)

    def wait_for_close(self, stop: threading.Event) -> ClosedRound | None:
        """Block until every selected silo contributed or the deadline passed, then close the round;
        None if `stop` was set first (the round stays open on disk, for a restart to resume)."""
        with self._changed:
            local = self._round
            if local is None:
                raise WrongState("no local round is open")
            while True:
                if stop.is_set():
                    return None
                remaining = local.opened.deadline - time.monotonic()
                if remaining <= 0 or local.done():
                    break
                self._changed.wait(min(remaining, 0.5))
        return self._close(local)

    def close_now(self) -> ClosedRound:
        """Close the open round at once, whoever has contributed."""
        with self._changed:
            local = self._round
        if local is None:
            raise WrongState("no local round is open")
        return self._close(local)

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can drain promptly."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def finish(self) -> None:
        self.abandon("the federation finished")
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def history(self) -> list[RoundSummary]:
        return [summary(entry) for entry in read_history(self._state).rounds if entry.closed_at is not None]

    def left_out(self) -> list[LeftOutEntry]:
        return [
            left_out_entry(e) for r in self._state.rounds() for e in self._state.registry.left_out(r.number)
        ]

    def silos(self) -> list[str]:
        with self._changed:
            return sorted(self._silos)

    def current_round(self) -> int:
        with self._changed:
            return self._round.number if self._round is not None else 0

    # --- internals ---------------------------------------------------------------------------

    def _close(self, local: LocalRound) -> ClosedRound:
        closed = self._recorder.close(local, self._privacy, self._global_location)
        with self._changed:
            self._changed.notify_all()
        return closed

    def _exclude(self, number: int, excluded: Excluded) -> None:
        self._recorder.exclude(number, excluded)

    def _spec_of(self, architecture: str) -> ModelSpec:
        with self._changed:
            if self._spec is not None and self._spec.architecture == architecture:
                return self._spec
        try:
            return Mlp.parse(architecture).spec()
        except ValueError as error:
            raise NotFound(f"the shapes of model {architecture!r} are not known here: {error}") from None

    def _record(self, kind: EventKind, **fields: Any) -> None:
        self._audit.record(
            AuditEvent(kind=kind, actor=self.identity, jurisdiction=self.jurisdiction, **fields)
        )

    def _open_round(self, round_number: int) -> LocalRound:
        with self._changed:
            local = self._round
        if local is None:
            raise WrongState(f"round {round_number} is not open; no round has started yet")
        if local.number != round_number:
            raise WrongState(f"round {round_number} is not open; the open round is {local.number}")
        return local

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
