"""SIGTERM mid-round loses nothing: real global and regional processes stopped the way Kubernetes
and systemd stop them. The tiers go NOT_SERVING while they drain (heard by health watchers on the
mTLS port and on the plaintext health-only port), exit 0, and on restart the updates accepted
before the signal are counted exactly once, the round commits and the next round runs.
(tests/integration/test_faults.py covers SIGKILL and SIGSTOP.)
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rounds_support import (
    GLOBAL,
    WAIT_S,
    Cluster,
    assert_rounds_add_up,
    constant,
    free_port,
    regional_identity,
    write_plan,
)
from test_faults import committed_mean, contributors, states

from jurisfed.demo.fleet import Member
from jurisfed.rpc.channel import open_channel
from jurisfed.store.tier_state import RoundStatus

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """Every status a Health/Watch stream reports until the server goes away."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.statuses: list[int] = []
        self._stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=2 * WAIT_S
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._stream:
                self.statuses.append(response.status)
        except grpc.RpcError:
            pass  # the server stopped

    def ended(self) -> list[int]:
        self._reader.join(WAIT_S)
        assert not self._reader.is_alive(), "the server never closed the health stream"
        return self.statuses


def terminate(cluster: Cluster, member: Member) -> int:
    """SIGTERM `member`, as Kubernetes does, and its exit status."""
    member.process.send_signal(signal.SIGTERM)
    code = member.process.wait(timeout=WAIT_S)
    cluster.fleet.members.remove(member)
    return code


def drained(cluster: Cluster, member: Member, name: str, health_port: int) -> None:
    """SIGTERM `member` while watching its health on both ports: SERVING, then NOT_SERVING while it
    drains, then gone; exit 0."""
    tls = cluster.tls(regional_identity("EU") if name == "regional-EU" else GLOBAL)
    with (
        open_channel(cluster.addresses[name], tls) as mtls,
        grpc.insecure_channel(f"127.0.0.1:{health_port}") as plaintext,
    ):
        watches = [HealthWatch(mtls), HealthWatch(plaintext)]
        cluster.wait_for(
            f"{name} watched as SERVING", lambda: all(w.statuses[-1:] == [SERVING] for w in watches)
        )
        assert terminate(cluster, member) == 0
        for watch in watches:
            assert watch.ended()[-1] == NOT_SERVING
    assert '"message": "stopping", "signal": "SIGTERM"' in cluster.log(name)
    assert '"message": "stopped"' in cluster.log(name)


def test_sigterm_mid_round_loses_no_accepted_update_at_either_tier(cluster: Cluster, tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        cohort={"jurisdictions": ["EU"], "min_silos_per_jurisdiction": 3},
        deadlines={"silo_s": 80.0, "regional_s": 90.0, "global_s": 100.0},
    )
    global_health, regional_health = free_port(), free_port()
    global_member = cluster.start_global(
        plan=str(plan), port=free_port(), health_listen=f"127.0.0.1:{global_health}"
    )
    regional = cluster.start_regional(
        "EU",
        ["silo-a", "silo-b", "silo-c"],
        port=free_port(),
        min_silos=3,
        health_listen=f"127.0.0.1:{regional_health}",
    )
    a, b, c = (cluster.silo("EU", f"silo-{x}", examples=n) for x, n in (("a", 100), ("b", 50), ("c", 50)))
    assert a.take_part(0, 0.2, examples=100) == 1
    assert b.take_part(0, 0.4) == 1

    # The regional drains with two of three updates accepted; then the global, mid-round, too.
    drained(cluster, regional, "regional-EU", regional_health)
    drained(cluster, global_member, "global", global_health)
    # The regional restarts while the global is down, and is stopped again before it could reach it.
    again = cluster.restart("regional-EU", "regional", "regional-EU-2")
    assert terminate(cluster, again) == 0
    assert cluster.state("regional-EU").round(1).state is RoundStatus.OPEN

    cluster.restart("global", "global_agg", "global-restarted")
    cluster.restart("regional-EU", "regional", "regional-EU-3")
    task = c.next_round(0)  # the same round, still open: its model is the one a and b trained on
    assert task.round == 1
    c.fetch(task.round, task.base_model_sha256)
    retried = a.submit(1, constant(0.2), examples=100, key="silo-a-1")
    assert (retried.accepted, retried.duplicate) == (True, True)  # counted once, before the signal
    assert c.submit(1, constant(0.6), examples=50, key="silo-c-1").accepted
    for silo, value in ((a, 0.2), (b, 0.4), (c, 0.6)):
        assert silo.take_part(1, value, examples=100 if silo is a else 50) == 2
    cluster.wait_until_finished()

    assert contributors(cluster, "regional-EU", 1) == ["silo-a", "silo-b", "silo-c"]
    assert contributors(cluster, "global", 1) == ["EU"]
    assert states(cluster, "regional-EU") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    assert states(cluster, "global") == [RoundStatus.COMMITTED, RoundStatus.COMMITTED]
    # (100 * 0.2 + 50 * 0.4 + 50 * 0.6) / 200 = 0.35: a and b kept, a not twice (that would be 0.32).
    assert committed_mean(cluster, 1) == pytest.approx(0.35, abs=0.005)
    for tier in ("regional-EU", "global"):
        assert_rounds_add_up(cluster, tier)
