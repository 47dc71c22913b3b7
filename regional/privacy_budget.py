"""The regional's privacy budget: central DP is accounted for before anything crosses the border.

When the round contract's silo rule adds DP noise (dp_gaussian, dp_adaptive), each round the
regional runs is one release of its jurisdiction's data, accounted for in the PrivacyLedger
(the `privacy_releases` table of the regional's state file) as the rule's dp_accounting event.
The budget is the lower of two caps, each checked over its own window:
  - the regional's residency policy, for the aggregate's destination (a rule's
    `differential_privacy: {max_epsilon, max_delta, period_days}`): the site's policy wins;
  - the contract's `privacy.max_epsilon` at `privacy.delta`, counted over PLAN_PERIOD_DAYS (it
    counts every release of the jurisdiction in that window, not only the plan's: stricter).
A DP round with neither cap is refused: spending without a limit is not an option.

`refusal` runs BEFORE the round: a round whose release would exceed a cap is declined, naming
the cap's rule and the figures (spent, with this round, cap). `release` records the round's
release once its aggregate exists (idempotent per round: release id "round-N"); `spend` is what
the export decision reads, so a policy demanding DP sees the DP actually applied.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from jurisfed.aggregation.differential_privacy import DPRule, find_dp
from jurisfed.aggregation.factories import parse_rule
from jurisfed.auth.identity import GLOBAL_JURISDICTION
from jurisfed.errors import WrongState
from jurisfed.policy.engine import requirements
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Decision, Endpoint, PrivacyLimit, PrivacySpend, Tier
from jurisfed.privacy.accounting import describe, release_event
from jurisfed.privacy.ledger import Budget, BudgetCheck, PrivacyLedger
from jurisfed.round_contract import RoundContract
from jurisfed.telemetry import Instrumentation

PLAN_PERIOD_DAYS = 365
PLAN_RULE_ID = "round-plan:privacy.max_epsilon"
NO_BUDGET_RULE_ID = "privacy-budget-missing"


@dataclass(frozen=True)
class Cap:
    rule_id: str  # the policy rule, or the plan key, that sets it
    budget: Budget


def release_id(round_number: int) -> str:
    return f"round-{round_number}"


@dataclass(frozen=True)
class PrivacyBudget:
    ledger: PrivacyLedger
    guard: PolicyGuard
    instruments: Instrumentation  # refusals are audited by the guard, as its own decisions

    @property
    def jurisdiction(self) -> str:
        return self.guard.policy.jurisdiction

    def refusal(self, contract: RoundContract, global_location: str | None) -> Decision | None:
        """The decision declining round `contract.round` if its release would exceed a cap (audited
        and counted as a policy decision); None when the round adds no noise or fits every cap."""
        dp = _dp_of(contract)
        if dp is None:
            return None
        caps = self.caps(contract, global_location)
        if not caps:
            return self._deny(
                contract.round,
                NO_BUDGET_RULE_ID,
                f"aggregation.silos adds DP noise ({dp}), but neither the round contract "
                "(privacy.max_epsilon) nor this regional's policy sets an epsilon cap; "
                "a DP round without a budget is refused",
            )
        event = release_event(dp.dp_event())
        for cap in caps:
            check = self.ledger.would_exceed(
                self.jurisdiction, event, cap.budget.cap_epsilon, cap.budget.delta, cap.budget.period_days
            )
            self._report(check)
            if check.exceeds:
                reason = f"round {contract.round} ({describe(event)}): {check.reason}"
                return self._deny(contract.round, cap.rule_id, reason)
        return None

    def release(self, contract: RoundContract, global_location: str | None) -> PrivacySpend | None:
        """Record round `contract.round`'s release (again: a no-op); the spend after it, or None
        without DP. WrongState if a cap was spent meanwhile (the aggregate must not leave)."""
        dp = _dp_of(contract)
        if dp is None:
            return None
        caps = self.caps(contract, global_location)
        event = release_event(dp.dp_event())
        rid = release_id(contract.round)
        for cap in caps:
            check = self.ledger.would_exceed(
                self.jurisdiction, event, cap.budget.cap_epsilon, cap.budget.delta, cap.budget.period_days
            )
            recorded = any(r.release_id == rid for r in self.ledger.releases(self.jurisdiction))
            if check.exceeds and not recorded:
                raise WrongState(f"round {contract.round} was not released: {check.reason}")
        if not caps:
            raise WrongState(f"round {contract.round} was not released: no privacy budget")
        tightest = min(caps, key=lambda cap: cap.budget.cap_epsilon)
        check = self.ledger.record_within(self.jurisdiction, rid, event, tightest.budget, note=str(dp))
        if not check.recorded:
            raise WrongState(f"round {contract.round} was not released: {check.reason}")
        return self.spend(contract, global_location)

    def spend(self, contract: RoundContract, global_location: str | None) -> PrivacySpend | None:
        """What this jurisdiction has spent, with round `contract.round` counted whether or not it
        has run yet, as the export decision reads it (over the policy's period); None without DP."""
        dp = _dp_of(contract)
        if dp is None:
            return None
        limit = self.policy_limit(global_location)
        delta = limit.max_delta if limit is not None else contract.privacy.delta
        period_days = limit.period_days if limit is not None else PLAN_PERIOD_DAYS
        event = release_event(dp.dp_event())
        recorded = any(
            r.release_id == release_id(contract.round) for r in self.ledger.releases(self.jurisdiction)
        )
        check = self.ledger.would_exceed(self.jurisdiction, event, sys.float_info.max, delta, period_days)
        epsilon = check.epsilon_spent if recorded else check.epsilon_after
        return PrivacySpend(epsilon, delta, period_days)

    def caps(self, contract: RoundContract, global_location: str | None) -> list[Cap]:
        caps = []
        limit = self.policy_limit(global_location)
        if limit is not None:
            caps.append(
                Cap(
                    self._policy_rule_id(global_location),
                    Budget(limit.max_epsilon, limit.max_delta, limit.period_days),
                )
            )
        if contract.privacy.max_epsilon is not None:
            budget = Budget(contract.privacy.max_epsilon, contract.privacy.delta, PLAN_PERIOD_DAYS)
            caps.append(Cap(PLAN_RULE_ID, budget))
        return caps

    def policy_limit(self, global_location: str | None) -> PrivacyLimit | None:
        """The policy's DP cap for aggregates to the global (location unknown: every rule's, strictest)."""
        needs = requirements(self.guard.policy, Artifact.AGGREGATE, self._source(), _global(global_location))
        return needs.differential_privacy

    def _policy_rule_id(self, global_location: str | None) -> str:
        needs = requirements(self.guard.policy, Artifact.AGGREGATE, self._source(), _global(global_location))
        limited = [
            rule.id
            for rule in self.guard.policy.rules_for(Artifact.AGGREGATE)
            if rule.id in needs.rule_ids and rule.conditions.differential_privacy is not None
        ]
        return limited[0] if limited else "policy"

    def _source(self) -> Endpoint:
        return Endpoint(Tier.REGIONAL, self.jurisdiction, self.guard.location)

    def _report(self, check: BudgetCheck) -> None:
        self.instruments.metrics.privacy_spent(
            jurisdiction=self.jurisdiction,
            epsilon=check.epsilon_spent,
            delta=check.budget.delta,
            epsilon_limit=check.budget.cap_epsilon,
        )

    def _deny(self, round_number: int, rule_id: str, reason: str) -> Decision:
        decision = self.guard.refuse(
            rule_id, reason, condition="differential_privacy", round_number=round_number
        )
        self.instruments.metrics.policy_decision(decision)
        return decision


def _dp_of(contract: RoundContract) -> DPRule | None:
    return find_dp(parse_rule(contract.aggregation.silos))


def _global(location: str | None) -> Endpoint:
    return Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, location or None)
