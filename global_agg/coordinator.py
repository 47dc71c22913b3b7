"""The global aggregator's state and round loop.

Rounds are numbered from 1 and run under a round plan (plans.py): round r starts from the head
checkpoint, is announced to the regionals of the plan's cohort with its signed contract,
accepts one aggregate per jurisdiction until every registered member has sent or declined or
the deadline passes, and is then closed (closing.py): committed as checkpoint r, failed at its
gates, or aborted with a reason, the model unchanged.

The regional side is a RegionalDesk (regional_desk.py), which holds the in-memory state the
round loop shares with it; a RoundOpener (round_opening.py) holds the running plan, issues each
round's contract and rebuilds an interrupted round. This class keeps the loop and operators' acts.

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
from pathlib import Path

from global_agg.acceptance import Acceptance
from global_agg.aggregates import AggregateDesk
from global_agg.closing import RoundCloser
from global_agg.plans import ContractIssuer
from global_agg.regional_desk import Live, RegionalDesk
from global_agg.round_opening import RoundOpener
from global_agg.snapshot import GlobalSnapshot, take_snapshot
from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.errors import ConfigError, InvalidInput, WrongState
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Endpoint
from jurisfed.round_plan import RoundPlan
from jurisfed.rounds import AggregateHeader, PlanProgress, RoundAnnouncement, RoundHistory
from jurisfed.store.blobs import BlobStore
from jurisfed.store.history import plan_progress, read_history
from jurisfed.store.plans import PlanRecord, PlanStatus
from jurisfed.store.tier_state import CheckpointRecord, RoundStatus, TierState
from jurisfed.telemetry import Attribute, Instrumentation, SpanName, traceparent
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2

log = logging.getLogger("jurisfed.global")

STATE_FILE = "state.sqlite"
BLOB_DIR = "blobs"
ABORT_WAIT_S = 30.0


@dataclass(frozen=True)
class Schedule:
    """When the first round may open: once this many jurisdictions registered, or after the timeout."""

    expected_jurisdictions: int
    start_timeout_s: float


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
        self._members = dict(members)
        self._spec = spec
        self._schedule = schedule
        self._issuer = issuer
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
        rule_states = RuleStates(state_dir / STATE_FILE)
        self._opener = RoundOpener(
            identity,
            spec,
            self._state,
            self._blobs,
            issuer,
            acceptance,
            guard,
            self._members,
            rule_states,
            audit,
        )
        head = self._opener.head()
        self._model = self._blobs.get_weights(head.blob_sha256, spec)
        self._outliers = OutlierHandling(
            identity,
            QuarantineRegistry(state_dir / STATE_FILE),
            audit,
            self._instruments,
            # Through the desk, built below on these outliers: it knows each jurisdiction's regional.
            identity_of=lambda jurisdiction: self._desk.regional_identity(jurisdiction),  # noqa: PLW0108
            jurisdiction_of=lambda jurisdiction: jurisdiction,
        )
        self._closer = RoundCloser(
            identity,
            spec,
            self._state,
            self._blobs,
            acceptance,
            audit,
            self._instruments,
            outliers=self._outliers,
            rule_states=rule_states,
        )
        endpoint = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, guard.location)
        aggregates = AggregateDesk(
            identity, spec, self._state, self._blobs, guard, self._members, audit, self._instruments
        )
        self._desk = RegionalDesk(
            identity, spec, self._state, endpoint, self._members, aggregates, self._outliers, audit
        )
        self._changed = self._desk.changed  # the one condition the round loop and the regionals share
        if self._opener.plan is None and initial_plan is not None and not self._state.plans.plans():
            try:
                self._opener.check_plan(initial_plan)
            except InvalidInput as error:
                raise ConfigError(str(error)) from None
            self._opener.start_plan(initial_plan)
        self._desk.finished = self._opener.plan is None and self._opener.last_plan_finished()
        self._abort: str | None = None

    # --- regional side (regional_desk.py) ----------------------------------------------------

    def register_regional(self, peer: Identity, code_version: str = "") -> str:
        return self._desk.register_regional(peer, code_version)

    @property
    def contract_key_pem(self) -> bytes:
        return self._issuer.public_pem

    def wait_for_round(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        return self._desk.wait_for_round(peer, after_round, max_wait_s)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        return self._desk.base_model(peer, round_number)

    def decline_round(
        self, peer: Identity, round_number: int, rule_id: str, reason: str, policy_sha256: str
    ) -> None:
        self._desk.decline_round(peer, round_number, rule_id, reason, policy_sha256)

    def submit_aggregate(
        self,
        peer: Identity,
        header: AggregateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
    ) -> Receipt:
        return self._desk.submit_aggregate(peer, header, chunks, meter, certificate_pem)

    # --- the round loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run the round plans until `stop`: the round a crash interrupted first, then each plan's
        rounds as operators start them; between plans the federation waits (or is finished)."""
        self._resume(stop)
        awaited = False
        while not stop.is_set():
            with self._changed:
                plan = self._opener.plan
                number = self._state.resume().next_round
                if plan is not None and number > plan.last_round:
                    self._end_plan(PlanStatus.FINISHED, f"ran rounds {plan.first_round}-{plan.last_round}")
                    log.info("plan finished", extra={"plan": plan.name, "last_round": plan.last_round})
                    continue
                if plan is None:
                    self._changed.wait(0.5)
                    continue
            if not awaited:
                self._desk.wait_for_jurisdictions(
                    self._schedule.expected_jurisdictions, self._schedule.start_timeout_s, stop
                )
                awaited = True
            self._run_round(number, plan, stop)

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can drain promptly."""
        with self._changed:
            self._desk.stopping = True
            self._changed.notify_all()

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

    def _open(self, number: int, plan: PlanRecord, trace_context: str) -> Live | None:
        with self._changed:
            if self._opener.plan is None or self._opener.plan.id != plan.id:
                return None  # the plan was aborted meanwhile
            head = self._opener.head()
            signed = self._opener.issue(number, plan, head)
            deadline_s = signed.contract.deadlines.global_s
            live = self._announce(
                self._opener.start(signed, self._model, head.blob_sha256, deadline_s, trace_context)
            )
            log.info(
                "round opened",
                extra={"round": number, "plan": plan.name, "jurisdictions": sorted(self._desk.regionals)},
            )
            return live

    def _announce(self, live: Live) -> Live:
        """Announce `live` as the open round (call with the lock held)."""
        self._desk.live = live
        self._desk.declined.clear()
        self._abort = None
        self._desk.finished = False
        self._changed.notify_all()
        return live

    def _follow(self, live: Live, stop: threading.Event) -> str | None:
        """Wait for quorum, the deadline or an abort, then close; None if stopped (left open on disk)."""
        opened, contract = live.opened, live.contract
        intake = opened.intake
        quarantined = set(self._outliers.active())  # refused this round: not waited for
        with self._changed:
            while True:
                if stop.is_set():
                    return None
                aborted_by = self._abort
                expected = {
                    j for j in self._desk.regionals if j in contract.cohort.jurisdictions
                } - quarantined
                done = set(intake.contributors)
                settled = done | (self._desk.declined & expected)
                enough = len(done) >= contract.quorum.min_jurisdictions or bool(self._desk.declined)
                remaining = opened.deadline - time.monotonic()
                if aborted_by is not None or remaining <= 0 or (settled >= expected and enough):
                    break
                self._changed.wait(min(remaining, 0.5))
            declined = set(self._desk.declined)
        closed = self._closer.close(
            opened, contract, expected=expected, declined=declined, aborted_by=aborted_by
        )
        with self._changed:
            self._model = closed.model
            self._desk.live = None
            self._abort = None
            self._changed.notify_all()
        return str(closed.status)

    def _resume(self, stop: threading.Event) -> None:
        """Go on with the round a crash interrupted: its recorded aggregates folded again, announced
        until its recorded deadline; closed at once if it was closing or its deadline has passed."""
        began = time.monotonic()
        restored = self._opener.restore()
        if restored is None:
            return
        record, live = restored.record, restored.live
        with self._changed:
            self._announce(live)
            if record.state is RoundStatus.CLOSING or self._opener.plan is None:
                self._abort = (
                    None if self._opener.plan is not None else "its plan was stopped before it closed"
                )
                live.opened.deadline = time.monotonic()
        log.info(
            "round resumed after a restart",
            extra={
                "round": record.number,
                "state": str(record.state),
                "contributions": list(restored.contributors),
                "remaining_s": round(restored.remaining_s, 1),
                "resume_s": round(time.monotonic() - began, 3),
            },
        )
        self._follow(live, stop)

    # --- operators -------------------------------------------------------------------------------

    def start_plan(self, operator: Identity, plan: RoundPlan) -> PlanProgress:
        """Run `plan` from the next round on; WrongState while another plan runs."""
        self._opener.check_plan(plan)
        with self._changed:
            running = self._opener.plan
            if running is not None:
                raise WrongState(
                    f"plan {running.name} is running (rounds {running.first_round}-"
                    f"{running.last_round}); abort it first"
                )
            started = self._opener.start_plan(plan)
            self._desk.finished = False
            self._changed.notify_all()
        log.info(
            "plan started",
            extra={"plan": plan.name, "first_round": started.first_round, "by": str(operator)},
        )
        return plan_progress(started)

    def abort(self, operator: Identity, reason: str) -> tuple[int, PlanProgress | None]:
        """Abort the open round (nothing merged) and stop the running plan; (round aborted or 0, plan)."""
        why = f"by operator {operator.node}: {reason or 'no reason given'}"
        with self._changed:
            live = self._desk.live
            stopped = self._end_plan(PlanStatus.ABORTED, why) if self._opener.plan is not None else None
            if live is None:
                return 0, stopped
            self._abort = why
            self._changed.notify_all()
            give_up = time.monotonic() + ABORT_WAIT_S
            while self._desk.live is live and time.monotonic() < give_up:
                self._changed.wait(0.5)
        log.warning("round aborted by an operator", extra={"round": live.opened.number, "by": str(operator)})
        return live.opened.number, stopped

    def rollback(
        self, operator: Identity, to_version: int, reason: str
    ) -> tuple[int | None, CheckpointRecord]:
        """Make checkpoint `to_version` the head, its bytes checked against its hash; WrongState
        while a round is open. Returns the version rolled back from and the new head."""
        with self._changed:
            if self._desk.live is not None:
                raise WrongState(
                    f"round {self._desk.live.opened.number} is open; abort it before rolling back"
                )
            target = self._state.checkpoint(to_version)
            weights = self._blobs.get_weights(target.blob_sha256, self._spec)
            previous = self._opener.head()
            head = self._state.rollback(to_version, reason or f"by operator {operator.node}")
            self._model = weights
            self._changed.notify_all()
        self._audit.record(
            AuditEvent(
                kind=EventKind.ROLLBACK,
                actor=self.identity,
                jurisdiction=GLOBAL_JURISDICTION,
                digests={"model": head.blob_sha256},
                details={
                    Detail.CHECKPOINT_VERSION: head.version,
                    Detail.REASON: (reason or "no reason given")[:900],
                },
            )
        )
        log.warning("rolled back", extra={"from": previous.version, "to": head.version, "by": str(operator)})
        return previous.version, head

    def history(self) -> RoundHistory:
        return read_history(self._state)

    def snapshot(self) -> GlobalSnapshot:
        return take_snapshot(self._desk, self._state)

    # --- internals -------------------------------------------------------------------------------

    def _end_plan(self, status: PlanStatus, reason: str) -> PlanProgress:
        """End the running plan (call with the lock held)."""
        ended = self._opener.end_plan(status, reason)
        self._desk.finished = status is PlanStatus.FINISHED
        self._changed.notify_all()
        return ended
