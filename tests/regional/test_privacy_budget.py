"""The regional's privacy budget under the real EU policy: the policy's DP cap for a destination
without adequacy (epsilon 3 per 90 days) lets exactly the rounds that fit run, refuses the next
with the policy rule and the figures; the lower cap wins; a DP round with no cap is refused; the
export decision sees the DP actually applied, which is what that destination demands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jurisfed.audit.sink import MemoryAuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.modeling.mlp import Mlp
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.loader import read_policy
from jurisfed.policy.model import PrivacySpend
from jurisfed.privacy.accounting import epsilon, gaussian_event
from jurisfed.privacy.ledger import PrivacyLedger
from jurisfed.round_contract import BaseCheckpoint, RoundContract, contract_for
from jurisfed.round_plan import Aggregation, Cohort, Privacy, RoundPlan
from jurisfed.telemetry import Instrumentation
from regional.export import plan_export
from regional.privacy_budget import NO_BUDGET_RULE_ID, PLAN_RULE_ID, PrivacyBudget

POLICY = Path(__file__).parents[2] / "deploy" / "policies" / "eu.yaml"
NOISE = 3.0
DP_RULE = f"dp_gaussian(noise_multiplier={NOISE}, clip=1.0, clients=5)"
BASE = BaseCheckpoint(version=0, sha256="ab" * 32, architecture="mlp-4-8-3")
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def contract(number: int, *, max_epsilon: float | None = None, silos: str = DP_RULE) -> RoundContract:
    plan = RoundPlan(
        name="dp",
        rounds=10,
        cohort=Cohort(jurisdictions=("EU",)),
        aggregation=Aggregation(silos=silos),
        privacy=Privacy(max_epsilon=max_epsilon),
    )
    return contract_for(plan, number, base=BASE, issued_at=NOW)


def budget(tmp_path: Path) -> PrivacyBudget:
    regional = Identity("EU", Tier.REGIONAL, "regional-eu")
    guard = PolicyGuard(read_policy(POLICY), regional, MemoryAuditSink())
    ledger = PrivacyLedger(tmp_path / "state.sqlite")
    return PrivacyBudget(ledger, guard, Instrumentation.off())


def spend_rounds(privacy: PrivacyBudget, location: str, **terms: float) -> int:
    """Run rounds 1, 2, ... while the budget lets them; the first round refused."""
    for number in range(1, 20):
        if privacy.refusal(contract(number, **terms), location) is not None:
            return number
        privacy.release(contract(number, **terms), location)
    raise AssertionError("the budget never ran out")


def test_the_policy_cap_for_a_destination_without_adequacy_lets_exactly_the_rounds_that_fit(
    tmp_path: Path,
) -> None:
    fitting = max(k for k in range(1, 20) if epsilon([gaussian_event(NOISE)] * k, 1e-5) <= 3.0)
    privacy = budget(tmp_path)
    assert spend_rounds(privacy, "us-east") == fitting + 1
    refusal = privacy.refusal(contract(fitting + 1), "us-east")
    assert refusal is not None
    assert refusal.rule_id == "eu-private-aggregates-elsewhere"
    assert "privacy budget cap 3 would be exceeded" in refusal.reason
    assert f"spent in {fitting} release(s)" in refusal.reason
    # Recording the same round again changes nothing (a round closed twice after a restart).
    privacy.release(contract(fitting), "us-east")
    assert len(privacy.ledger.releases("EU")) == fitting


def test_the_plan_cap_binds_when_it_is_lower_than_the_policy_cap(tmp_path: Path) -> None:
    plan_cap = epsilon([gaussian_event(NOISE)] * 2, 1e-5) + 0.01
    privacy = budget(tmp_path)
    assert spend_rounds(privacy, "us-east", max_epsilon=plan_cap) == 3
    refusal = privacy.refusal(contract(3, max_epsilon=plan_cap), "us-east")
    assert refusal is not None
    assert refusal.rule_id == PLAN_RULE_ID


def test_a_dp_round_without_any_cap_is_refused_and_a_round_without_noise_needs_none(tmp_path: Path) -> None:
    privacy = budget(tmp_path)
    refusal = privacy.refusal(contract(1), "ch-zurich")  # adequacy: the policy sets no DP cap
    assert refusal is not None
    assert refusal.rule_id == NO_BUDGET_RULE_ID
    assert privacy.refusal(contract(1, silos="mean"), "ch-zurich") is None
    assert privacy.release(contract(1, silos="mean"), "ch-zurich") is None


def test_the_export_decision_sees_the_dp_actually_applied(tmp_path: Path) -> None:
    privacy = budget(tmp_path)
    spec = Mlp.parse("mlp-4-8-3").spec()

    def export(spend: PrivacySpend | None) -> str:
        decision = plan_export(
            privacy.guard,
            spec,
            round_number=1,
            global_location="us-east",
            codec=Codec(CodecKind.INT8),
            cohort_silos=5,
            privacy=spend,
        ).decision
        return "allowed" if decision.allowed else decision.reason

    assert "differential privacy is required and was not applied" in export(None)
    spend = privacy.release(contract(1), "us-east")
    assert spend is not None
    assert spend.epsilon == pytest.approx(epsilon([gaussian_event(NOISE)], 1e-5))
    assert export(spend) == "allowed"
