"""A tier's residency policy at work: every flow decided by the one engine and recorded.

Each tier loads its signed policy once at start-up with `load_tier_policy` (an unsigned,
tampered or malformed file stops the process) and wraps it in a `PolicyGuard`, which it asks
about every flow in and out. Every decision, allow and deny, becomes a `policy_decision`
audit event carrying the rule id and the policy hash.
"""

from __future__ import annotations

from pathlib import Path

from jurisfed.audit.events import AuditEvent, Detail, EventKind
from jurisfed.audit.events import Decision as AuditDecision
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity
from jurisfed.errors import ConfigError, NotAllowed
from jurisfed.policy.engine import decide, deny
from jurisfed.policy.errors import PolicyError
from jurisfed.policy.loader import load_policy
from jurisfed.policy.model import Decision, Flow, Policy
from jurisfed.policy.signing import load_trusted_keys

__all__ = ["PolicyGuard", "PolicyRefused", "load_tier_policy"]


class PolicyRefused(NotAllowed):
    """A flow a residency policy does not allow; the message names the policy and the rule."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(
            f"refused by policy {decision.policy_id} v{decision.policy_version}, "
            f"rule {decision.rule_id}: {decision.reason}"
        )
        self.decision = decision


def load_tier_policy(policy_file: Path, trusted_keys: Path, *, jurisdiction: str | None = None) -> Policy:
    """The tier's policy, approved by a key in `trusted_keys`; ConfigError (exit 2) otherwise.

    With `jurisdiction`, the policy must be that jurisdiction's: a node never runs under
    another jurisdiction's rules.
    """
    try:
        policy = load_policy(policy_file, load_trusted_keys([trusted_keys]))
    except PolicyError as error:
        raise ConfigError(f"residency policy not usable: {error}") from None
    except OSError as error:
        raise ConfigError(f"residency policy {policy_file}: {error.strerror or error}") from None
    if jurisdiction is not None and policy.jurisdiction != jurisdiction:
        raise ConfigError(
            f"policy {policy_file} is {policy.label}, but this node serves jurisdiction {jurisdiction}"
        )
    return policy


class PolicyGuard:
    def __init__(self, policy: Policy, actor: Identity, audit: AuditSink) -> None:
        self.policy = policy
        self._actor = actor
        self._audit = audit

    @property
    def location(self) -> str | None:
        """Where the aggregator this policy governs is hosted, as the policy names it."""
        return self.policy.hosting_location

    def decide(
        self, flow: Flow, *, round_number: int | None = None, subject: Identity | None = None
    ) -> Decision:
        """The engine's decision on `flow`, recorded in the audit log whatever it is."""
        decision = decide(self.policy, flow)
        what = f"{flow.artifact.value} from {flow.source} to {flow.destination}"
        details: dict[str, str | int | float | bool] = {Detail.REASON: f"{what}: {decision.reason}"[:900]}
        if flow.cohort_silos is not None:
            details[Detail.COHORT_SIZE] = flow.cohort_silos
        self._record(decision, details, round_number=round_number, subject=subject)
        return decision

    def refuse(
        self, rule_id: str, reason: str, *, condition: str, round_number: int | None = None
    ) -> Decision:
        """A refusal the tier decides beside the engine, under a rule of its policy (a privacy budget
        its ledger says would be exceeded), recorded in the audit log as the engine's are."""
        decision = deny(self.policy, rule_id, reason, condition)
        self._record(decision, {Detail.REASON: reason[:900]}, round_number=round_number, subject=None)
        return decision

    def _record(
        self,
        decision: Decision,
        details: dict[str, str | int | float | bool],
        *,
        round_number: int | None,
        subject: Identity | None,
    ) -> None:
        self._audit.record(
            AuditEvent(
                kind=EventKind.POLICY_DECISION,
                actor=self._actor,
                jurisdiction=self.policy.jurisdiction,
                round_number=round_number,
                subject=subject,
                policy_hash=decision.policy_sha256,
                decision=AuditDecision.ALLOW if decision.allowed else AuditDecision.DENY,
                rule=decision.rule_id,
                details=details,
            )
        )

    def require(
        self, flow: Flow, *, round_number: int | None = None, subject: Identity | None = None
    ) -> Decision:
        """Like `decide`, but a refusal raises PolicyRefused (PERMISSION_DENIED to a peer)."""
        decision = self.decide(flow, round_number=round_number, subject=subject)
        if not decision.allowed:
            raise PolicyRefused(decision)
        return decision
