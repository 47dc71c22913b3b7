"""Central DP at a real regional with a privacy budget: the EU regional, whose cap allows exactly
two rounds of its Gaussian mechanism, contributes two rounds (killed with SIGKILL and restarted
between them, which does not reset its ledger), then declines the third with the rule and the
figures; the global goes on with the US alone, and the refusal shows in `round status`, in the
audit log and in `jurisfed privacy report`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from rounds_support import Cluster, constant, free_port, write_plan

from jurisfed.audit.events import Decision, Detail, EventKind
from jurisfed.errors import NotFound
from jurisfed.policy.model import PrivacySpend
from jurisfed.privacy.accounting import epsilon, gaussian_event
from jurisfed.privacy.ledger import PrivacyLedger
from jurisfed.store.tier_state import RoundStatus

pytestmark = pytest.mark.slow

NOISE = 3.0
DELTA = 1e-5
EPSILON_OF = {k: epsilon([gaussian_event(NOISE)] * k, DELTA) for k in (1, 2, 3)}
CAP = (EPSILON_OF[2] + EPSILON_OF[3]) / 2  # two releases fit, a third does not
PLAN_RULE = "round-plan:privacy.max_epsilon"


def committed(cluster: Cluster, number: int) -> bool:
    try:
        return cluster.state("global").round(number).state is RoundStatus.COMMITTED
    except NotFound:
        return False


def test_a_regional_spends_its_privacy_budget_across_a_restart_then_declines_and_the_global_goes_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=3,
        cohort={
            "jurisdictions": ["EU", "US"],
            "min_silos_per_jurisdiction": 1,
            "max_silos_per_jurisdiction": 10,
        },
        deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
        aggregation={
            "silos": f"dp_gaussian(noise_multiplier={NOISE}, clip=1.0, clients=2)",
            "jurisdictions": "mean",
        },
        privacy={"max_epsilon": CAP, "delta": DELTA},
    )
    cluster.start_global(plan=str(plan), expected_jurisdictions=2)
    eu_regional = cluster.start_regional("EU", ["s1", "s2"], port=free_port())  # the same after a restart
    silos = [cluster.silo("EU", "s1"), cluster.silo("EU", "s2")]
    us = cluster.regional_played("US")

    def us_takes_part(number: int) -> None:
        task = us.next_round(number - 1)
        us.fetch(task)
        if number == 1:  # the contract adds noise at the regionals: an aggregate declaring none is refused
            with pytest.raises(grpc.RpcError) as refused:
                us.submit(number, constant(0.01), examples=100, key="us-undeclared")
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "declares none" in str(refused.value.details())
        spend = PrivacySpend(EPSILON_OF[number], DELTA, 365)
        assert us.submit(number, constant(0.01), examples=100, key=f"us-{number}", privacy=spend).accepted

    for silo in silos:
        assert silo.take_part(0, 0.1) == 1
    us_takes_part(1)
    cluster.wait_for("round 1 to commit", lambda: committed(cluster, 1))
    cluster.kill(eu_regional)  # SIGKILL: nothing is flushed or closed
    cluster.restart("regional-EU", "regional", "regional-EU-restarted")
    for silo in silos:
        assert silo.take_part(1, 0.1) == 2
    us_takes_part(2)
    us_takes_part(3)  # the EU declines round 3: its budget would be exceeded
    cluster.wait_until_finished()

    contributions = cluster.state("global")
    assert [sorted(c.participant for c in contributions.contributions(n)) for n in (1, 2, 3)] == [
        ["EU", "US"], ["EU", "US"], ["US"],
    ]  # fmt: skip
    assert [r.state for r in contributions.rounds()] == [RoundStatus.COMMITTED] * 3

    ledger = PrivacyLedger(cluster.directory / "regional-EU" / "state.sqlite")
    assert [r.release_id for r in ledger.releases("EU")] == ["round-1", "round-2"]
    assert ledger.spent("EU", delta=DELTA) == pytest.approx(EPSILON_OF[2])
    declined = cluster.state("regional-EU").round(3)
    assert declined.state is RoundStatus.ABORTED
    assert f"declined: rule {PLAN_RULE}: round 3" in declined.reason
    assert f"privacy budget cap {CAP:g} would be exceeded" in declined.reason
    assert f"{EPSILON_OF[2]:.4g} spent in 2 release(s), {EPSILON_OF[3]:.4g} with this one" in declined.reason

    status = cluster.cli("status")
    assert status.returncode == 0, status.stderr
    assert f"round 3: EU declined by its policy, rule {PLAN_RULE}: round 3" in status.stdout, status.stdout

    events = cluster.audit("regional-EU")
    refusals = [e for e in events if e.kind is EventKind.POLICY_DECISION and e.rule == PLAN_RULE]
    assert [(e.round_number, e.decision) for e in refusals] == [(3, Decision.DENY)]
    sent = {e.round_number: e.details for e in events if e.kind is EventKind.AGGREGATE_SENT}
    assert sent[1][Detail.DP_EPSILON] == pytest.approx(EPSILON_OF[1])
    assert sent[2][Detail.DP_EPSILON] == pytest.approx(EPSILON_OF[2])
    # The EU declared its spend with each aggregate, and the global recorded what it checked.
    received = [
        e.details
        for e in cluster.audit("global")
        if e.kind is EventKind.AGGREGATE_RECEIVED and e.decision is Decision.ALLOW and e.jurisdiction == "EU"
    ]
    assert [d[Detail.DP_EPSILON] for d in received] == pytest.approx([EPSILON_OF[1], EPSILON_OF[2]])

    state_dir = str(cluster.directory / "regional-EU")
    budget = ["--policy", str(cluster.policies / "eu.yaml"), "--max-epsilon", str(CAP), "--delta", str(DELTA)]
    report = subprocess.run(
        [sys.executable, "-m", "jurisfed", "privacy", "report", "--state-dir", state_dir, *budget],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert f"EU: cap epsilon {CAP:g} per 365 days" in report.stdout, report.stdout
    assert (
        f"spent {EPSILON_OF[2]:.4g} in the last 365 days (2 releases), remaining {CAP - EPSILON_OF[2]:.4g}"
        in (report.stdout)
    )
