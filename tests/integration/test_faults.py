"""Rounds survive the faults of a real federation: processes killed with SIGKILL and stopped with
SIGSTOP mid-round. A global and regionals run as OS processes; silos are scripted processes
where a silo is what fails, and otherwise played by the test over the real wire.

Every test checks the round records and counts at each tier, and, from the tiers' state alone,
that each committed model is its base plus the weighted mean of exactly the contributions
recorded for its round (nothing lost, nothing counted twice); then that training goes on.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from rounds_support import (
    SPEC,
    Cluster,
    assert_rounds_add_up,
    constant,
    every_blob_is_accounted_for,
    free_port,
    write_plan,
)

from jurisfed.store.tier_state import RoundStatus

pytestmark = pytest.mark.slow


def left_out(cluster: Cluster, tier: str, number: int) -> dict[str, str]:
    return {e.participant: e.reason.value for e in cluster.state(tier).registry.left_out(number)}


def refusals(cluster: Cluster, tier: str, number: int) -> dict[str, str]:
    return {r.participant: r.code for r in cluster.state(tier).refusals(number)}


def contributors(cluster: Cluster, tier: str, number: int) -> list[str]:
    return sorted(c.participant for c in cluster.state(tier).contributions(number))


def states(cluster: Cluster, tier: str) -> list[RoundStatus]:
    return [r.state for r in cluster.state(tier).rounds()]


def committed_mean(cluster: Cluster, number: int) -> float:
    """The global's round-`number` change to the model, as one number (every delta is constant)."""
    model = cluster.blobs("global").get_weights(cluster.state("global").checkpoint(number).blob_sha256, SPEC)
    base = cluster.blobs("global").get_weights(cluster.state("global").round(number).base_sha256, SPEC)
    return float(np.mean(model["hidden_1/bias"] - base["hidden_1/bias"]))


def test_a_silo_killed_mid_upload_leaves_nothing_behind_and_the_round_commits_without_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml", cohort={"jurisdictions": ["EU"], "min_silos_per_jurisdiction": 2}
    )
    cluster.start_global(plan=str(plan))
    cluster.start_regional("EU", ["silo-a", "silo-b", "silo-c"], min_silos=2)
    killed = cluster.scripted_silo("EU", "silo-a", "--half-round", "1", "--value", "9.0")
    cluster.progress("silo-a", "registered")
    b, c = cluster.silo("EU", "silo-b"), cluster.silo("EU", "silo-c", examples=150)

    assert b.take_part(0, 0.1) == 1
    assert c.take_part(0, 0.3, examples=150) == 1
    cluster.progress("silo-a", "half-sent 1")
    time.sleep(0.3)  # the first half is on the regional's side of the connection
    os.killpg(killed.pid, signal.SIGKILL)
    assert b.take_part(1, 0.1) == 2  # training goes on without silo-a
    assert c.take_part(1, 0.3, examples=150) == 2
    cluster.wait_until_finished()

    # The regional counted b and c, and of silo-a's half upload nothing: no record, no blob.
    assert (
        contributors(cluster, "regional-EU", 1)
        == contributors(cluster, "regional-EU", 2)
        == ["silo-b", "silo-c"]
    )
    assert refusals(cluster, "regional-EU", 1) == {"silo-a": "upload_incomplete"}
    assert left_out(cluster, "regional-EU", 1) == {"silo-a": "upload_incomplete"}
    assert left_out(cluster, "regional-EU", 2) == {"silo-a": "deadline_missed"}
    assert every_blob_is_accounted_for(cluster, "regional-EU") == set()
    # The global committed both rounds: the EU aggregate is (50 * 0.1 + 150 * 0.3) / 200 = 0.25
    # (int8 on the way), where any part of silo-a's 9.0 would show.
    assert states(cluster, "global") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    assert committed_mean(cluster, 1) == pytest.approx(0.25, abs=0.01)
    for tier in ("regional-EU", "global"):
        assert_rounds_add_up(cluster, tier)
    with cluster.operator("EU") as operator:
        view = operator.regional("EU")
    assert [(e.round, e.participant, e.code) for e in view.left_out] == [
        (1, "silo-a", "upload_incomplete"),
        (2, "silo-a", "deadline_missed"),
    ]


def test_a_silo_stopped_past_the_deadline_is_refused_as_late_and_takes_part_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plan.yaml")
    cluster.start_global(plan=str(plan))
    cluster.start_regional("EU", ["silo-a", "silo-b"])
    stopped = cluster.scripted_silo("EU", "silo-a", "--delay", "0.5", "--value", "0.5")
    cluster.progress("silo-a", "registered")
    b = cluster.silo("EU", "silo-b")

    assert b.take_part(0, 0.1) == 1
    cluster.progress("silo-a", "fetched 1")
    os.killpg(stopped.pid, signal.SIGSTOP)
    with cluster.operator() as operator:  # the regional closes at its deadline; round 2 opens
        cluster.wait_for("round 2", lambda: operator.federation().current_round == 2)
    os.killpg(stopped.pid, signal.SIGCONT)
    cluster.progress("silo-a", "refused 1 FAILED_PRECONDITION")
    assert b.take_part(1, 0.1) == 2
    cluster.progress("silo-a", "accepted 2")  # it rejoins from the current checkpoint
    cluster.wait_until_finished()

    assert contributors(cluster, "regional-EU", 1) == ["silo-b"]
    assert refusals(cluster, "regional-EU", 1) == {"silo-a": "late"}
    assert left_out(cluster, "regional-EU", 1) == {"silo-a": "deadline_missed"}
    assert contributors(cluster, "regional-EU", 2) == ["silo-a", "silo-b"]
    assert states(cluster, "global") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    assert committed_mean(cluster, 1) == pytest.approx(0.1, abs=0.01)  # silo-a's 0.5 is not in it
    assert committed_mean(cluster, 2) == pytest.approx(0.3, abs=0.01)
    for tier in ("regional-EU", "global"):
        assert_rounds_add_up(cluster, tier)


def test_half_the_silos_of_a_jurisdiction_killed_mid_round_the_rest_commit(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml", cohort={"jurisdictions": ["EU"], "min_silos_per_jurisdiction": 2}
    )
    cluster.start_global(plan=str(plan))
    names = [f"silo-{n}" for n in range(1, 5)]
    cluster.start_regional("EU", names, min_silos=2)
    silos = {
        name: cluster.scripted_silo("EU", name, "--delay", "1.0", "--value", str(0.1 * n))
        for n, name in enumerate(names, start=1)
    }
    for name in names:
        cluster.progress(name, "fetched 1")
    for name in names[:2]:
        os.killpg(silos[name].pid, signal.SIGKILL)
    for name in names[2:]:
        cluster.progress(name, "accepted 2")
    cluster.wait_until_finished()

    for number in (1, 2):
        assert contributors(cluster, "regional-EU", number) == ["silo-3", "silo-4"]
        assert left_out(cluster, "regional-EU", number) == {
            "silo-1": "deadline_missed",
            "silo-2": "deadline_missed",
        }
        assert committed_mean(cluster, number) == pytest.approx(0.35, abs=0.01)  # (0.3 + 0.4) / 2
    assert states(cluster, "global") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    for tier in ("regional-EU", "global"):
        assert_rounds_add_up(cluster, tier)


def test_a_regional_killed_after_two_of_three_updates_resumes_the_round_on_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        cohort={"jurisdictions": ["EU"], "min_silos_per_jurisdiction": 3},
        deadlines={"silo_s": 20.0, "regional_s": 25.0, "global_s": 30.0},
    )
    cluster.start_global(plan=str(plan))
    regional = cluster.start_regional("EU", ["silo-a", "silo-b", "silo-c"], port=free_port(), min_silos=3)
    a, b, c = (cluster.silo("EU", f"silo-{x}", examples=n) for x, n in (("a", 100), ("b", 50), ("c", 50)))
    assert a.take_part(0, 0.2, examples=100) == 1
    assert b.take_part(0, 0.4) == 1

    cluster.kill(regional)  # after two of the three updates
    began = time.monotonic()
    cluster.restart("regional-EU", "regional", "regional-EU-restarted")
    serving_s = time.monotonic() - began
    task = c.next_round(0)  # the same round, still open: its model is the one a and b trained on
    assert task.round == 1
    c.fetch(task.round, task.base_model_sha256)
    retried = a.submit(1, constant(0.2), examples=100, key="silo-a-1")
    assert (retried.accepted, retried.duplicate) == (True, True)  # counted once, before the crash
    assert c.submit(1, constant(0.6), examples=50, key="silo-c-1").accepted
    for silo, value in ((a, 0.2), (b, 0.4), (c, 0.6)):
        assert silo.take_part(1, value, examples=100 if silo is a else 50) == 2
    cluster.wait_until_finished()

    assert contributors(cluster, "regional-EU", 1) == ["silo-a", "silo-b", "silo-c"]
    assert states(cluster, "regional-EU") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    # (100 * 0.2 + 50 * 0.4 + 50 * 0.6) / 200 = 0.35: a and b kept, a not twice (that would be 0.32).
    assert committed_mean(cluster, 1) == pytest.approx(0.35, abs=0.005)
    for tier in ("regional-EU", "global"):
        assert_rounds_add_up(cluster, tier)
    resumed = re.search(
        r'"message": "round resumed after a restart".*"resume_s": ([0-9.]+)',
        cluster.log("regional-EU-restarted"),
    )
    assert resumed is not None
    print(
        f"\nregional restart: serving {serving_s:.2f} s after SIGKILL; round resumed in {resumed.group(1)} s"
    )


def test_a_global_killed_mid_round_resumes_it_with_the_aggregates_it_had(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        cohort={"jurisdictions": ["EU", "US"]},
        quorum={"min_jurisdictions": 2},
        deadlines={"silo_s": 20.0, "regional_s": 25.0, "global_s": 30.0},
    )
    process = cluster.start_global(plan=str(plan), port=free_port(), expected_jurisdictions=2)
    eu, us = cluster.regional_played("EU"), cluster.regional_played("US")
    first = eu.next_round(0)
    eu.fetch(first)
    assert eu.submit(1, constant(0.2), examples=300, key="eu-1").accepted

    cluster.kill(process)
    began = time.monotonic()
    cluster.restart("global", "global_agg", "global-restarted")
    serving_s = time.monotonic() - began
    again = us.next_round(0)  # the regionals stay registered: the global kept them on disk
    assert (again.round, again.base_model_sha256) == (1, first.base_model_sha256)
    assert eu.submit(1, constant(0.2), examples=300, key="eu-1").duplicate
    assert us.submit(1, constant(0.6), examples=100, key="us-1", cohort=3).accepted
    second = eu.next_round(1)
    assert second.round == 2
    for played, key in ((eu, "eu-2"), (us, "us-2")):
        played.submit(2, constant(0.1), examples=100, key=key, cohort=5 if played is eu else 3)
    cluster.wait_until_finished()

    assert contributors(cluster, "global", 1) == ["EU", "US"]
    assert states(cluster, "global") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    assert committed_mean(cluster, 1) == pytest.approx(0.3, abs=0.01)  # (300 * 0.2 + 100 * 0.6) / 400
    assert_rounds_add_up(cluster, "global")
    resumed = re.search(
        r'"message": "round resumed after a restart".*"resume_s": ([0-9.]+)', cluster.log("global-restarted")
    )
    assert resumed is not None
    print(f"\nglobal restart: serving {serving_s:.2f} s after SIGKILL; round resumed in {resumed.group(1)} s")


def test_a_global_stopped_for_twice_the_regional_deadline_goes_on_when_continued(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        cohort={"jurisdictions": ["EU", "US"]},
        deadlines={"silo_s": 3.0, "regional_s": 3.0, "global_s": 5.0},
    )
    global_member = cluster.start_global(plan=str(plan), expected_jurisdictions=2)
    for jurisdiction in ("EU", "US"):
        cluster.start_regional(jurisdiction, ["silo-a"])
    eu, us = cluster.silo("EU", "silo-a"), cluster.silo("US", "silo-a")
    for silo in (eu, us):
        assert silo.next_round(0).round == 1  # both regionals run round 1
    os.kill(global_member.process.pid, signal.SIGSTOP)
    eu.take_part(0, 0.2)
    us.take_part(0, 0.4)
    time.sleep(2 * 3.0)
    os.kill(global_member.process.pid, signal.SIGCONT)
    assert eu.take_part(1, 0.1) == 2
    assert us.take_part(1, 0.1) == 2
    cluster.wait_until_finished()

    # Round 1 at the global: whatever arrived before its deadline counts once; the rest is late.
    first = cluster.state("global").round(1)
    sent = contributors(cluster, "global", 1)
    assert first.state in (RoundStatus.COMMITTED, RoundStatus.ABORTED)
    assert (first.state is RoundStatus.COMMITTED) == bool(sent)
    missing = {"EU", "US"} - set(sent)
    assert set(left_out(cluster, "global", 1)) == missing
    assert set(refusals(cluster, "global", 1)) <= missing
    # Each regional committed its own round 1, and both took part in round 2, which committed.
    for tier in ("regional-EU", "regional-US"):
        assert states(cluster, tier) == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    assert contributors(cluster, "global", 2) == ["EU", "US"]
    assert cluster.state("global").round(2).state is RoundStatus.COMMITTED
    for tier in ("regional-EU", "regional-US", "global"):
        assert_rounds_add_up(cluster, tier)
