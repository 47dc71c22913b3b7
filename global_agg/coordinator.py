"""The global aggregator's state and round loop.

Rounds are numbered from 1 and run under a round plan (plans.py): round r starts from the head
checkpoint, is announced to the regionals of the plan's cohort with its signed contract,
accepts one aggregate per jurisdiction until every registered member has sent or declined or
the deadline passes, and is then closed (closing.py): committed as checkpoint r, failed at its
gates, or aborted with a reason, the model unchanged.

Everything that must outlive the process is in `state_dir`: a TierState (state.sqlite: rounds,
contributions, registered regionals, plans, checks, checkpoints) and a BlobStore (blobs/: every
checkpoint, every contract and every aggregate received). An aggregate is stored and recorded
before it is folded into the round, so a global killed at any point and restarted resumes the
round it was in: it folds the recorded aggregates again, announces the round again until its
recorded deadline (closing it at once if the deadline has passed), and answers a regional's
retry of an aggregate already recorded as a duplicate. Nothing is lost, nothing counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from global_agg.acceptance import Acceptance
from global_agg.aggregates import AggregateDesk
from global_agg.closing import RoundCloser
from global_agg.plans import ContractIssuer, check_runnable
from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import Board, OpenRound, wait_for_announcement
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.roles import require_tier
from jurisfed.errors import ConfigError, InvalidInput, JurisfedError, NotAllowed, WrongState
from jurisfed.modeling.evaluation import MlpProbe
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Endpoint, Flow
from jurisfed.round_contract import BaseCheckpoint, RoundContract, SignedContract
from jurisfed.round_plan import RoundPlan
from jurisfed.rounds import (
    AggregateHeader,
    Contribution,
    LeftOutEntry,
    PlanProgress,
    Refusal,
    RoundAnnouncement,
    RoundHistory,
    RoundState,
    RoundSummary,
)
from jurisfed.store.blobs import BlobStore
from jurisfed.store.history import plan_progress, read_history, summary
from jurisfed.store.plans import PlanRecord, PlanStatus
from jurisfed.store.tier_state import CheckpointRecord, RoundStatus, TierState
from jurisfed.telemetry import Attribute, Instrumentation, SpanName, traceparent
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire import serde
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2

log = logging.getLogger("jurisfed.global")

STATE_FILE = "state.sqlite"
BLOB_DIR = "blobs"
# Aggregates staged at once; there is one per jurisdiction per round.
MAX_CONCURRENT_AGGREGATES = 8
ABORT_WAIT_S = 30.0


@dataclass(frozen=True)
class Schedule:
    """When the first round may open: once this many jurisdictions registered, or after the timeout."""

    expected_jurisdictions: int
    start_timeout_s: float


@dataclass(frozen=True)
class GlobalSnapshot:
    current_round: int
    state: RoundState
    jurisdictions: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]
    contributions: tuple[Contribution, ...]
    refusals: tuple[Refusal, ...]
    left_out: tuple[LeftOutEntry, ...] = ()
    plan: PlanProgress | None = None


@dataclass
class _Live:
    """The open round and the contract it runs under."""

    opened: OpenRound
    contract: RoundContract


class GlobalCoordinator:
    def __init__(
        self,
        identity: Identity,
        spec: ModelSpec,
        initial: Weights,
        state_dir: Path,
        schedule: Schedule,
        *,
        issuer: ContractIssuer,
        acceptance: Acceptance,
        audit: AuditSink,
        guard: PolicyGuard,
        members: Mapping[str, PolicyGuard],
        initial_plan: RoundPlan | None = None,
        instruments: Instrumentation | None = None,
    ) -> None:
        """`guard` holds the global's own policy; `members` each member jurisdiction's policy,
        which must also allow every aggregate that jurisdiction exports. `initial_plan` runs on
        the first start of a fresh `state_dir` (a restarted global goes on with its running plan)."""
        self.identity = identity
        self._audit = audit
        self._instruments = instruments or Instrumentation.off()
        self._guard = guard
        self._members = dict(members)
        self._endpoint = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, guard.location)
        self._spec = spec
        self._schedule = schedule
        self._issuer = issuer
        self._acceptance = acceptance
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state = TierState(state_dir / STATE_FILE)
        self._blobs = BlobStore(state_dir / BLOB_DIR)
        initial_blob = self._blobs.put_weights(spec, initial)
        try:
            self._state.record_initial_checkpoint(initial_blob, spec.architecture)
        except WrongState as error:
            raise ConfigError(
                f"{state_dir} belongs to another model ({error}); the architecture and seed must not change"
            ) from None
        head = self._require_head()
        self._model = self._blobs.get_weights(head.blob_sha256, spec)
        self._outliers = OutlierHandling(
            identity,
            QuarantineRegistry(state_dir / STATE_FILE),
            audit,
            self._instruments,
            identity_of=self._regional_identity,
            jurisdiction_of=lambda jurisdiction: jurisdiction,
        )
        self._rule_states = RuleStates(state_dir / STATE_FILE)
        self._closer = RoundCloser(
            identity,
            spec,
            self._state,
            self._blobs,
            acceptance,
            audit,
            self._instruments,
            outliers=self._outliers,
            rule_states=self._rule_states,
        )
        self._desk = AggregateDesk(
            identity, spec, self._state, self._blobs, guard, self._members, audit, self._instruments
        )
        self._regionals: dict[str, Identity] = {}
        for silo in self._state.registry.silos():  # regionals are registered under their identity URI
            known = Identity.parse(silo.silo_id)
            if known.tier is Tier.REGIONAL:
                self._regionals[known.jurisdiction] = known
        self._plan = self._state.plans.running()
        if self._plan is None and initial_plan is not None and not self._state.plans.plans():
            try:
                self._check_plan(initial_plan)
            except InvalidInput as error:
                raise ConfigError(str(error)) from None
            self._plan = self._start_plan(initial_plan)
        self._live: _Live | None = None
        self._finished = self._plan is None and self._last_plan_finished()
        self._stopping = False
        self._abort: str | None = None
        self._refusals: list[Refusal] = []
        self._declined: set[str] = set()  # jurisdictions that declined the open round
        self._changed = threading.Condition()

    # --- regional side -----------------------------------------------------------------------

    def register_regional(self, peer: Identity, code_version: str = "") -> str:
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
                self._state.registry.forget_silo(str(known))
            self._state.registry.register_silo(str(peer), 0, "", code_version[:64])
            self._regionals[peer.jurisdiction] = peer
            self._changed.notify_all()
        log.info("regional registered", extra={"jurisdiction": peer.jurisdiction, "node": peer.node})
        return peer.jurisdiction

    @property
    def contract_key_pem(self) -> bytes:
        return self._issuer.public_pem

    def wait_for_round(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        self._check_registered(peer)
        return wait_for_announcement(
            self._changed, lambda: self._board(peer.jurisdiction), after_round, max_wait_s
        )

    def _board(self, jurisdiction: str) -> Board:
        live = self._live
        invited = live is not None and jurisdiction in live.contract.cohort.jurisdictions
        return Board(live.opened if live is not None and invited else None, self._finished, self._stopping)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        self._check_registered(peer)
        live = self._open_round(round_number)
        if peer.jurisdiction not in live.contract.cohort.jurisdictions:
            raise NotAllowed(f"{peer.jurisdiction} is not in the cohort of round {round_number}")
        flow = Flow(Artifact.MODEL_CHECKPOINT, self._endpoint, self._desk.regional_endpoint(peer))
        self._desk.require_both(peer, flow, round_number)
        return self._spec, live.opened.base

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
        self._state.record_refusal(
            round_number,
            peer.jurisdiction,
            "declined",
            f"rule {refusal.rule_id or 'unnamed'}: {refusal.reason}",
        )
        with self._changed:
            self._declined.add(peer.jurisdiction)
            self._refusals.append(refusal)
            self._changed.notify_all()
        log.warning(
            "round declined by a regional's policy",
            extra={"round": round_number, "jurisdiction": peer.jurisdiction, "rule": rule_id},
        )

    def submit_aggregate(
        self,
        peer: Identity,
        header: AggregateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
    ) -> Receipt:
        """Take a jurisdiction's aggregate to the open round (aggregates.py); refusals are recorded."""
        try:
            self._check_registered(peer)
            self._outliers.refuse_if_quarantined(peer.jurisdiction)
            live = self._open_round(header.round)
        except JurisfedError as error:
            with self._changed:
                open_round = self._live.opened.number if self._live is not None else None
            self._desk.refused(peer, header.round, meter, error, open_round=open_round)
            raise
        receipt = self._desk.take(
            peer, header, chunks, meter, certificate_pem, live.opened, live.contract.cohort.jurisdictions
        )
        with self._changed:
            self._changed.notify_all()
        return receipt

    # --- the round loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run the round plans until `stop`: the round a crash interrupted first, then each plan's
        rounds as operators start them; between plans the federation waits (or is finished)."""
        self._resume(stop)
        awaited = False
        while not stop.is_set():
            with self._changed:
                plan = self._plan
                number = self._state.resume().next_round
                if plan is not None and number > plan.last_round:
                    self._end_plan(PlanStatus.FINISHED, f"ran rounds {plan.first_round}-{plan.last_round}")
                    log.info("plan finished", extra={"plan": plan.name, "last_round": plan.last_round})
                    continue
                if plan is None:
                    self._changed.wait(0.5)
                    continue
            if not awaited:
                self._await_jurisdictions(stop)
                awaited = True
            self._run_round(number, plan, stop)

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can drain promptly."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def _await_jurisdictions(self, stop: threading.Event) -> None:
        give_up = time.monotonic() + self._schedule.start_timeout_s
        with self._changed:
            while len(self._regionals) < self._schedule.expected_jurisdictions and not stop.is_set():
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "starting without every expected jurisdiction",
                        extra={
                            "registered": sorted(self._regionals),
                            "expected": self._schedule.expected_jurisdictions,
                        },
                    )
                    return
                self._changed.wait(min(remaining, 0.5))

    def _run_round(self, number: int, plan: PlanRecord, stop: threading.Event) -> None:
        """One round, traced as one span every participant's work joins (via `traceparent`)."""
        span = self._instruments.tracer.start_span(SpanName.ROUND, attributes={Attribute.ROUND: number})
        try:
            live = self._open(number, plan, traceparent(span))
            if live is not None:
                outcome = self._follow(live, stop)
                if outcome is not None:
                    span.set_attribute(Attribute.OUTCOME, outcome)
        finally:
            span.end()

    def _open(self, number: int, plan: PlanRecord, trace_context: str) -> _Live | None:
        with self._changed:
            if self._plan is None or self._plan.id != plan.id:
                return None  # the plan was aborted meanwhile
            head = self._require_head()
            signed = self._issuer.issue(
                serde.round_plan_from_json(plan.document.encode()),
                number,
                BaseCheckpoint(head.version, head.blob_sha256, self._spec.architecture),
            )
            self._blobs.put(signed.canonical)  # named by the contract's SHA-256
            deadline_s = signed.contract.deadlines.global_s
            self._state.open_round(number, signed.contract.sha256, head.blob_sha256, duration_s=deadline_s)
            self._record(
                EventKind.CONTRACT_ISSUED,
                GLOBAL_JURISDICTION,
                round_number=number,
                digests={"contract": signed.contract.sha256, "model": head.blob_sha256},
                details={Detail.CHECKPOINT_VERSION: head.version},
            )
            live = self._announce(signed, self._model, head.blob_sha256, deadline_s, trace_context)
            log.info(
                "round opened",
                extra={"round": number, "plan": plan.name, "jurisdictions": sorted(self._regionals)},
            )
            return live

    def _announce(
        self, signed: SignedContract, base: Weights, base_sha256: str, duration_s: float, trace_context: str
    ) -> _Live:
        """Open `signed`'s round in memory and announce it (call with the lock held)."""
        contract = signed.contract
        opened = OpenRound.start(
            contract.round,
            self._spec,
            contract.training,
            base,
            duration_s,
            codec=contract.compression.regional_to_global.to_codec(),
            max_concurrent=MAX_CONCURRENT_AGGREGATES,
            base_sha256=base_sha256,
            global_location=self._guard.location or "",
            traceparent=trace_context,
            contract=signed.canonical,
            contract_signature=signed.signature,
            rule=contract.aggregation.jurisdictions_rule(),
            rule_state=self._rule_states.before(contract.aggregation.jurisdictions_rule(), contract.round),
            probe=MlpProbe.of(self._spec.architecture, self._acceptance.probe, base),
        )
        self._live = _Live(opened, contract)
        self._declined.clear()
        self._abort = None
        self._finished = False
        self._changed.notify_all()
        return self._live

    def _follow(self, live: _Live, stop: threading.Event) -> str | None:
        """Wait for quorum, the deadline or an abort, then close; None if stopped (left open on disk)."""
        opened, contract = live.opened, live.contract
        intake = opened.intake
        quarantined = set(self._outliers.active())  # refused this round: not waited for
        with self._changed:
            while True:
                if stop.is_set():
                    return None
                aborted_by = self._abort
                expected = {j for j in self._regionals if j in contract.cohort.jurisdictions} - quarantined
                done = set(intake.contributors)
                settled = done | (self._declined & expected)
                enough = len(done) >= contract.quorum.min_jurisdictions or bool(self._declined)
                remaining = opened.deadline - time.monotonic()
                if aborted_by is not None or remaining <= 0 or (settled >= expected and enough):
                    break
                self._changed.wait(min(remaining, 0.5))
            declined = set(self._declined)
        closed = self._closer.close(
            opened, contract, expected=expected, declined=declined, aborted_by=aborted_by
        )
        with self._changed:
            self._model = closed.model
            self._live = None
            self._abort = None
            self._changed.notify_all()
        return str(closed.status)

    def _resume(self, stop: threading.Event) -> None:
        """Go on with the round a crash interrupted: its recorded aggregates folded again, announced
        until its recorded deadline; closed at once if it was closing or its deadline has passed."""
        began = time.monotonic()
        resumption = self._state.resume()
        record = resumption.in_flight
        if record is None:
            return
        contract = RoundContract.from_canonical_json(self._blobs.get(record.contract_sha256))
        remaining_s = 0.0
        if record.deadline_at is not None:
            remaining_s = max(0.0, (record.deadline_at - datetime.now(UTC)).total_seconds())
        base = self._blobs.get_weights(record.base_sha256, self._spec)
        with self._changed:
            live = self._announce(self._issuer.resign(contract), base, record.base_sha256, remaining_s, "")
            for kept in resumption.contributions:
                withheld = frozenset(kept.withheld)
                update = self._blobs.get_weights(kept.content_sha256, self._spec.without(withheld))
                live.opened.intake.restore(
                    kept.participant,
                    kept.idempotency_key,
                    float(kept.example_count),
                    update,
                    withheld=withheld,
                )
            if record.state is RoundStatus.CLOSING or self._plan is None:
                self._abort = None if self._plan is not None else "its plan was stopped before it closed"
                live.opened.deadline = time.monotonic()
        log.info(
            "round resumed after a restart",
            extra={
                "round": record.number,
                "state": str(record.state),
                "contributions": [c.participant for c in resumption.contributions],
                "remaining_s": round(remaining_s, 1),
                "resume_s": round(time.monotonic() - began, 3),
            },
        )
        self._follow(live, stop)

    # --- operators -------------------------------------------------------------------------------

    def start_plan(self, operator: Identity, plan: RoundPlan) -> PlanProgress:
        """Run `plan` from the next round on; WrongState while another plan runs."""
        self._check_plan(plan)
        with self._changed:
            if self._plan is not None:
                raise WrongState(
                    f"plan {self._plan.name} is running (rounds {self._plan.first_round}-"
                    f"{self._plan.last_round}); abort it first"
                )
            self._plan = self._start_plan(plan)
            self._finished = False
            self._changed.notify_all()
        log.info(
            "plan started",
            extra={"plan": plan.name, "first_round": self._plan.first_round, "by": str(operator)},
        )
        return plan_progress(self._plan)

    def abort(self, operator: Identity, reason: str) -> tuple[int, PlanProgress | None]:
        """Abort the open round (nothing merged) and stop the running plan; (round aborted or 0, plan)."""
        why = f"by operator {operator.node}: {reason or 'no reason given'}"
        with self._changed:
            live = self._live
            stopped = self._end_plan(PlanStatus.ABORTED, why) if self._plan is not None else None
            if live is None:
                return 0, stopped
            self._abort = why
            self._changed.notify_all()
            give_up = time.monotonic() + ABORT_WAIT_S
            while self._live is live and time.monotonic() < give_up:
                self._changed.wait(0.5)
        log.warning("round aborted by an operator", extra={"round": live.opened.number, "by": str(operator)})
        return live.opened.number, stopped

    def rollback(
        self, operator: Identity, to_version: int, reason: str
    ) -> tuple[int | None, CheckpointRecord]:
        """Make checkpoint `to_version` the head, its bytes checked against its hash; WrongState
        while a round is open. Returns the version rolled back from and the new head."""
        with self._changed:
            if self._live is not None:
                raise WrongState(f"round {self._live.opened.number} is open; abort it before rolling back")
            target = self._state.checkpoint(to_version)
            weights = self._blobs.get_weights(target.blob_sha256, self._spec)
            previous = self._require_head()
            head = self._state.rollback(to_version, reason or f"by operator {operator.node}")
            self._model = weights
            self._changed.notify_all()
        self._record(
            EventKind.ROLLBACK,
            GLOBAL_JURISDICTION,
            digests={"model": head.blob_sha256},
            details={
                Detail.CHECKPOINT_VERSION: head.version,
                Detail.REASON: (reason or "no reason given")[:900],
            },
        )
        log.warning("rolled back", extra={"from": previous.version, "to": head.version, "by": str(operator)})
        return previous.version, head

    def history(self) -> RoundHistory:
        return read_history(self._state)

    def snapshot(self) -> GlobalSnapshot:
        with self._changed:
            live = self._live
            jurisdictions = tuple(sorted(self._regionals))
            refusals = tuple(self._refusals)
            state = RoundState.FINISHED if self._finished else RoundState.OPEN if live else RoundState.WAITING
        # Read after the flags: a federation reported finished has every round on disk already.
        history = read_history(self._state)
        closed = [entry for entry in history.rounds if entry.closed_at is not None]
        return GlobalSnapshot(
            current_round=live.opened.number
            if live is not None
            else (history.rounds[-1].round if history.rounds else 0),
            state=state,
            jurisdictions=jurisdictions,
            rounds=tuple(summary(entry) for entry in closed),
            contributions=tuple(
                Contribution(
                    round=entry.round,
                    jurisdiction=p.participant,
                    cohort_size=p.cohort_size,
                    example_total=p.example_count,
                    bytes_received=p.bytes_received,
                    float32_bytes_equivalent=p.float32_bytes,
                )
                for entry in history.rounds
                for p in entry.participants
            ),
            refusals=refusals,
            left_out=tuple(e for entry in history.rounds for e in entry.left_out),
            plan=history.plans[-1] if history.plans else None,
        )

    # --- internals -------------------------------------------------------------------------------

    def _check_plan(self, plan: RoundPlan) -> None:
        check_runnable(plan, has_probe_set=self._acceptance.has_probe_set)
        strangers = sorted(set(plan.cohort.jurisdictions) - set(self._members))
        if strangers:
            raise InvalidInput(
                f"round plan {plan.name}: cohort.jurisdictions names {', '.join(strangers)}, whose residency "
                "policy this global does not hold (member_policies)"
            )

    def _start_plan(self, plan: RoundPlan) -> PlanRecord:
        document = serde.round_plan_to_json(plan).decode()
        return self._state.plans.start(plan.name, document, self._state.resume().next_round, plan.rounds)

    def _end_plan(self, status: PlanStatus, reason: str) -> PlanProgress:
        """End the running plan (call with the lock held)."""
        assert self._plan is not None
        ended = self._state.plans.end(self._plan.id, status, reason)
        self._plan = None
        self._finished = status is PlanStatus.FINISHED
        self._changed.notify_all()
        return plan_progress(ended)

    def _last_plan_finished(self) -> bool:
        plans = self._state.plans.plans()
        return bool(plans) and plans[-1].status is PlanStatus.FINISHED

    def _require_head(self) -> CheckpointRecord:
        head = self._state.head()
        if head is None:
            raise WrongState("the state holds no checkpoint to start from")
        return head

    def _record(self, kind: EventKind, jurisdiction: str, **fields: Any) -> None:
        self._audit.record(AuditEvent(kind=kind, actor=self.identity, jurisdiction=jurisdiction, **fields))

    def _open_round(self, round_number: int) -> _Live:
        with self._changed:
            live = self._live
        if live is None or live.opened.number != round_number or not live.opened.intake.is_open:
            open_now = live.opened.number if live is not None and live.opened.intake.is_open else "none"
            raise WrongState(f"round {round_number} is not open; the open round is {open_now}")
        return live

    def _regional_identity(self, jurisdiction: str) -> Identity:
        with self._changed:
            known = self._regionals.get(jurisdiction)
        return known if known is not None else Identity(jurisdiction, Tier.REGIONAL, "regional")

    def _check_registered(self, peer: Identity) -> None:
        require_tier(peer, Tier.REGIONAL, "take part in global rounds")
        with self._changed:
            known = self._regionals.get(peer.jurisdiction)
        if known is None or known.node != peer.node:
            raise WrongState(f"regional {peer} must register before anything else")
