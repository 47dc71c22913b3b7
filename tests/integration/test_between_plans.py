"""A regional and its silos are long-running services: when the ML team's round plan ends, the
regional process stays up, healthy, keeps its silos waiting, and runs the next plan's rounds
(numbered on from the last) without a restart or any operator action at the regional. Real
global and regional processes; the test plays the silo. No timing is asserted: states are polled.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from rounds_support import WAIT_S, Cluster, regional_identity, write_plan

from jurisfed.healthcheck import Verdict, check
from jurisfed.store.tier_state import RoundStatus
from jurisfed.wire.v1 import rounds_pb2

pytestmark = pytest.mark.slow

# Long enough for a regional that asks the idle global again only every few seconds to join.
DEADLINES = {"silo_s": 30.0, "regional_s": 40.0, "global_s": 60.0}


def idle_spells(cluster: Cluster) -> int:
    """How often the EU regional said it went idle (once each time a plan ended)."""
    return cluster.log("regional-EU").count('"message": "federation idle until the next round plan"')


def contributors(cluster: Cluster, number: int) -> list[str]:
    return sorted(c.participant for c in cluster.state("global").contributions(number))


def test_a_regional_stays_up_between_plans_and_runs_the_next_plan_without_a_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = write_plan(tmp_path / "first.yaml", name="first", rounds=1, deadlines=DEADLINES)
    cluster.start_global(plan=str(first))
    regional = cluster.start_regional("EU", ["hospital-a"], exit_when_finished=False)
    silo = cluster.silo("EU", "hospital-a")
    assert silo.take_part(0, 0.1) == 1
    cluster.wait_until_finished()

    # Plan "first" is over: the regional says so once, stays up and healthy, and its silo is kept
    # waiting for the next round instead of being told the federation finished.
    cluster.wait_for("the regional to go idle", lambda: idle_spells(cluster) == 1)
    assert silo.wait_for_task(1, max_wait_s=3.0).state == rounds_pb2.ROUND_STATE_WAITING
    assert regional.process.poll() is None
    health = check(cluster.addresses["regional-EU"], cluster.tls(regional_identity("EU")))
    assert health.verdict is Verdict.SERVING, health.detail

    # The ML team starts the next plan; the same regional process runs its rounds, numbered on.
    second = write_plan(tmp_path / "second.yaml", name="second", rounds=2, deadlines=DEADLINES)
    started = cluster.cli("start", "--plan", str(second))
    assert started.returncode == 0, started.stderr
    assert "started plan second: rounds 2-3, running" in started.stdout
    assert silo.take_part(1, 0.2) == 2
    assert silo.take_part(2, 0.3) == 3
    cluster.wait_until_finished()

    global_state = cluster.state("global")
    assert [(r.number, r.state) for r in global_state.rounds()] == [
        (1, RoundStatus.COMMITTED),
        (2, RoundStatus.COMMITTED),
        (3, RoundStatus.COMMITTED),
    ]
    assert [contributors(cluster, n) for n in (1, 2, 3)] == [["EU"], ["EU"], ["EU"]]
    assert [r.number for r in cluster.state("regional-EU").rounds()] == [1, 2, 3]
    cluster.wait_for("the regional to go idle again", lambda: idle_spells(cluster) == 2)
    assert cluster.log("regional-EU").count('"message": "serving"') == 1  # one process, never restarted

    regional.process.send_signal(signal.SIGTERM)
    assert regional.process.wait(timeout=WAIT_S) == 0, cluster.log("regional-EU")
    assert '"message": "stopped"' in cluster.log("regional-EU")
