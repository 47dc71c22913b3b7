"""How a global round comes to be: the plan it runs under, its contract issued and recorded, or
the round read back from disk after a restart.

A RoundOpener holds the running plan: it checks a round plan before it runs (runnable here, per
plans.py, its cohort only jurisdictions whose residency policy the global holds) and records its
start and its end. For each of its rounds it issues and signs the contract on the head
checkpoint, stores it (named by its SHA-256), records the round in the state file and the
issuance in the audit log, and starts the round in memory; after a crash it rebuilds the round
that was in flight: contract re-signed, recorded aggregates folded again, remaining time taken
from the recorded deadline. It takes no lock: the coordinator's lock guards `plan`, and the
coordinator announces the rounds it builds.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from global_agg.acceptance import Acceptance
from global_agg.plans import ContractIssuer, check_runnable
from global_agg.regional_desk import Live
from jurisfed.aggregation.open_round import OpenRound
from jurisfed.aggregation.rule_states import RuleStates
from jurisfed.audit.events import AuditEvent, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.modeling.evaluation import MlpProbe
from jurisfed.policy.guard import PolicyGuard
from jurisfed.round_contract import BaseCheckpoint, RoundContract, SignedContract
from jurisfed.round_plan import RoundPlan
from jurisfed.rounds import PlanProgress
from jurisfed.store.blobs import BlobStore
from jurisfed.store.history import plan_progress
from jurisfed.store.plans import PlanRecord, PlanStatus
from jurisfed.store.round_records import RoundRecord
from jurisfed.store.tier_state import CheckpointRecord, TierState
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire import serde

# Aggregates staged at once; there is one per jurisdiction per round.
MAX_CONCURRENT_AGGREGATES = 8


@dataclass(frozen=True)
class RestoredRound:
    """The round a crash interrupted, rebuilt from disk with its recorded aggregates folded again."""

    record: RoundRecord
    live: Live
    contributors: tuple[str, ...]
    remaining_s: float


class RoundOpener:
    def __init__(
        self,
        identity: Identity,
        spec: ModelSpec,
        state: TierState,
        blobs: BlobStore,
        issuer: ContractIssuer,
        acceptance: Acceptance,
        guard: PolicyGuard,
        members: Collection[str],
        rule_states: RuleStates,
        audit: AuditSink,
    ) -> None:
        """`members`: the jurisdictions whose residency policy the global holds."""
        self.identity = identity
        self._spec = spec
        self._state = state
        self._blobs = blobs
        self._issuer = issuer
        self._acceptance = acceptance
        self._guard = guard
        self._members = members
        self._rule_states = rule_states
        self._audit = audit
        self.plan: PlanRecord | None = state.plans.running()  # guarded by the coordinator's lock

    def check_plan(self, plan: RoundPlan) -> None:
        """InvalidInput unless `plan` can run here."""
        check_runnable(plan, has_probe_set=self._acceptance.has_probe_set)
        strangers = sorted(set(plan.cohort.jurisdictions) - set(self._members))
        if strangers:
            raise InvalidInput(
                f"round plan {plan.name}: cohort.jurisdictions names {', '.join(strangers)}, whose residency "
                "policy this global does not hold (member_policies)"
            )

    def start_plan(self, plan: RoundPlan) -> PlanRecord:
        """Record `plan` as the plan running from the next round on."""
        document = serde.round_plan_to_json(plan).decode()
        self.plan = self._state.plans.start(plan.name, document, self._state.resume().next_round, plan.rounds)
        return self.plan

    def end_plan(self, status: PlanStatus, reason: str) -> PlanProgress:
        """End the running plan."""
        assert self.plan is not None
        ended = self._state.plans.end(self.plan.id, status, reason)
        self.plan = None
        return plan_progress(ended)

    def last_plan_finished(self) -> bool:
        plans = self._state.plans.plans()
        return bool(plans) and plans[-1].status is PlanStatus.FINISHED

    def head(self) -> CheckpointRecord:
        """The checkpoint the next round starts from."""
        head = self._state.head()
        if head is None:
            raise WrongState("the state holds no checkpoint to start from")
        return head

    def issue(self, number: int, plan: PlanRecord, head: CheckpointRecord) -> SignedContract:
        """Issue round `number`'s contract on `head` under `plan`, and record the round and the issuance."""
        signed = self._issuer.issue(
            serde.round_plan_from_json(plan.document.encode()),
            number,
            BaseCheckpoint(head.version, head.blob_sha256, self._spec.architecture),
        )
        self._blobs.put(signed.canonical)  # named by the contract's SHA-256
        deadline_s = signed.contract.deadlines.global_s
        self._state.open_round(number, signed.contract.sha256, head.blob_sha256, duration_s=deadline_s)
        self._audit.record(
            AuditEvent(
                kind=EventKind.CONTRACT_ISSUED,
                actor=self.identity,
                jurisdiction=GLOBAL_JURISDICTION,
                round_number=number,
                digests={"contract": signed.contract.sha256, "model": head.blob_sha256},
                details={Detail.CHECKPOINT_VERSION: head.version},
            )
        )
        return signed

    def start(
        self, signed: SignedContract, base: Weights, base_sha256: str, duration_s: float, trace_context: str
    ) -> Live:
        """`signed`'s round in memory, open for `duration_s`; not announced yet."""
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
        return Live(opened, contract)

    def restore(self) -> RestoredRound | None:
        """The round a crash interrupted, its recorded aggregates folded again; None if there is none."""
        resumption = self._state.resume()
        record = resumption.in_flight
        if record is None:
            return None
        contract = RoundContract.from_canonical_json(self._blobs.get(record.contract_sha256))
        remaining_s = 0.0
        if record.deadline_at is not None:
            remaining_s = max(0.0, (record.deadline_at - datetime.now(UTC)).total_seconds())
        base = self._blobs.get_weights(record.base_sha256, self._spec)
        live = self.start(self._issuer.resign(contract), base, record.base_sha256, remaining_s, "")
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
        return RestoredRound(
            record, live, tuple(c.participant for c in resumption.contributions), remaining_s
        )
