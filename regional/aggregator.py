"""The regional aggregator: its silos, the open local round and the rounds behind it.

The servicer (silo side) and the upstream loop (global side) both act through this class; it
holds no gRPC objects. A local round opens when the global announces one under a verified
contract, decides which registered silos take part (local_round.py: eligibility, cohort size),
takes the selected silos' updates until each of them has contributed or the local deadline
passes, and then commits (quorum met: the mean delta becomes the jurisdiction's personalized
model and is handed upstream) or aborts with a reason (closing.py).

The silo side (registration, long poll, downloads, update intake) is a SiloDesk (silo_desk.py),
which holds the in-memory state both sides share under one condition; a RoundOpener
(round_opening.py) records new rounds and rebuilds an interrupted one. This class keeps the
upstream side: opening, taking over, abandoning, waiting for and closing local rounds.

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
from pathlib import Path
from typing import Any

from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.errors import NotFound, WrongState
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Decision as PolicyDecision
from jurisfed.policy.model import Endpoint, PrivacySpend
from jurisfed.privacy.ledger import PrivacyLedger
from jurisfed.round_contract import RoundContract
from jurisfed.rounds import LeftOutEntry, RoundAnnouncement, RoundSummary, TrainingConfig, UpdateHeader
from jurisfed.store.blobs import BlobStore
from jurisfed.store.history import left_out_entry, read_history, summary
from jurisfed.store.tier_state import RoundStatus, TierState
from jurisfed.telemetry import Instrumentation
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2
from regional.closing import ClosedRound, RoundRecorder
from regional.local_round import LocalRound, RoundTerms
from regional.personalization import Personalizer, ServedModels
from regional.privacy_budget import PrivacyBudget
from regional.round_opening import RoundOpener
from regional.silo_desk import SiloDesk

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
        blobs = BlobStore(state_dir / BLOB_DIR)
        self._min_silos = min_silos
        self._restored = False  # the open round was found on disk at start, not opened by this process
        outliers = OutlierHandling(
            identity,
            QuarantineRegistry(state_dir / STATE_FILE),
            audit,
            self.instruments,
            identity_of=lambda silo: Identity(identity.jurisdiction, Tier.SILO, silo),
            jurisdiction_of=lambda silo: identity.jurisdiction,
        )
        rule_states = RuleStates(state_dir / STATE_FILE)
        self._privacy = PrivacyBudget(PrivacyLedger(state_dir / STATE_FILE), guard, self.instruments)
        self._global_location: str | None = None  # where the global says it is hosted, once it said so
        served = ServedModels(state_dir / STATE_FILE)
        self._recorder = RoundRecorder(
            identity, self._state, blobs, audit, self.instruments, outliers, rule_states, served, personalizer
        )
        self._desk = SiloDesk(
            identity, guard, self._state, blobs, served, outliers, self._recorder, audit, self.instruments
        )
        self._opener = RoundOpener(
            self._state,
            blobs,
            rule_states,
            outliers,
            personalizer,
            min_silos=min_silos,
            max_concurrent_uploads=max_concurrent_uploads,
        )
        self._changed = self._desk.changed  # the one condition both sides wait on

    @property
    def jurisdiction(self) -> str:
        return self.identity.jurisdiction

    @property
    def endpoint(self) -> Endpoint:
        return self._desk.endpoint

    # --- silo side (silo_desk.py) ------------------------------------------------------------

    def register_silo(self, peer: Identity, example_count: int, schema_sha256: str, code_version: str) -> str:
        return self._desk.register_silo(peer, example_count, schema_sha256, code_version)

    def wait_for_task(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        return self._desk.wait_for_task(peer, after_round, max_wait_s)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        return self._desk.base_model(peer, round_number)

    def personalized_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        return self._desk.personalized_model(peer, round_number)

    def submit_update(
        self,
        peer: Identity,
        header: UpdateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
    ) -> Receipt:
        return self._desk.submit_update(peer, header, chunks, meter, certificate_pem)

    # --- upstream side -----------------------------------------------------------------------

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
        local = self._opener.open(
            number,
            spec,
            training,
            base,
            deadline_in_s,
            terms=terms,
            local_layers=local_layers,
            traceparent=traceparent,
        )
        with self._changed:
            excluded = local.select(list(self._desk.silos.values()))
            self._desk.round, self._desk.spec, self._restored = local, spec, False
            self._changed.notify_all()
        for exclusion in excluded:
            self._desk.exclude(number, exclusion)
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
        restored = self._opener.restore(self._desk.spec_of)
        if restored is None:
            return None
        local = restored.local
        with self._changed:
            fresh = [
                e for e in local.select(list(self._desk.silos.values())) if e.silo_id not in restored.recorded
            ]
            for silo_id, exclusion in restored.recorded.items():  # decisions recorded before the crash stand
                local.selected.discard(silo_id)
                local.excluded[silo_id] = exclusion
            local.selected |= set(restored.contributors)
            self._desk.round, self._desk.spec, self._restored = local, restored.spec, True
        for exclusion in fresh:
            self._desk.exclude(local.number, exclusion)
        log.info(
            "round resumed after a restart",
            extra={
                "round": local.number,
                "contributions": list(restored.contributors),
                "remaining_s": round(restored.remaining_s, 1),
                "resume_s": round(time.monotonic() - began, 3),
            },
        )
        return local.number

    def take_over(self, number: int, contract_sha256: str) -> bool:
        """Whether the round resumed at start is round `number` under that contract (go on with it)."""
        with self._changed:
            local = self._desk.round
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
            local = self._desk.round
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
            local = self._desk.round
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

    def registered_silos(self) -> int:
        with self._changed:
            return len(self._desk.silos)

    def wait_for_quorum_of_silos(self, stop: threading.Event) -> None:
        """Block until at least `min_silos` silos registered: before that no round could commit."""
        with self._changed:
            while len(self._desk.silos) < self._min_silos and not stop.is_set():
                self._changed.wait(0.5)

    def wait_for_close(self, stop: threading.Event) -> ClosedRound | None:
        """Block until every selected silo contributed or the deadline passed, then close the round;
        None if `stop` was set first (the round stays open on disk, for a restart to resume)."""
        with self._changed:
            local = self._desk.round
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
            local = self._desk.round
        if local is None:
            raise WrongState("no local round is open")
        return self._close(local)

    def shutdown(self) -> None:
        """Answer every waiting long poll now, so the server can drain promptly."""
        with self._changed:
            self._desk.stopping = True
            self._changed.notify_all()

    def finish(self) -> None:
        self.abandon("the federation finished")
        with self._changed:
            self._desk.finished = True
            self._changed.notify_all()

    def history(self) -> list[RoundSummary]:
        return [summary(entry) for entry in read_history(self._state).rounds if entry.closed_at is not None]

    def left_out(self) -> list[LeftOutEntry]:
        return [
            left_out_entry(e) for r in self._state.rounds() for e in self._state.registry.left_out(r.number)
        ]

    def silos(self) -> list[str]:
        with self._changed:
            return sorted(self._desk.silos)

    def current_round(self) -> int:
        with self._changed:
            return self._desk.round.number if self._desk.round is not None else 0

    # --- internals ---------------------------------------------------------------------------

    def _close(self, local: LocalRound) -> ClosedRound:
        closed = self._recorder.close(local, self._privacy, self._global_location)
        with self._changed:
            self._changed.notify_all()
        return closed

    def _record(self, kind: EventKind, **fields: Any) -> None:
        self._audit.record(
            AuditEvent(kind=kind, actor=self.identity, jurisdiction=self.jurisdiction, **fields)
        )
