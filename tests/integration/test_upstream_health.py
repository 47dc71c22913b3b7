"""A regional's health follows its upstream: real global and regional processes; the global is
killed, the regional's health goes NOT_SERVING once the global has been unreachable past
`upstream_unreachable_s` (asked as operators and Kubernetes ask: `python -m jurisfed.healthcheck`
over mTLS, and the plaintext health-only port), and SERVING again once the restarted global answers.
Every change is in the regional's audit log. No timing is asserted: each state is polled for.
"""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rounds_support import WAIT_S, Cluster, free_port, regional_identity

from jurisfed.audit.events import EventKind
from jurisfed.healthcheck import Verdict
from jurisfed.rpc.health_listener import LIVENESS

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def healthcheck(cluster: Cluster) -> Verdict:
    """`python -m jurisfed.healthcheck` against the EU regional, with its own certificate."""
    tls_dir = cluster.tls(regional_identity("EU")).cert.parent
    command = [sys.executable, "-m", "jurisfed.healthcheck", "--address", cluster.addresses["regional-EU"]]
    result = subprocess.run(
        [*command, "--tls-dir", str(tls_dir), "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Verdict(result.returncode)


def plaintext(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
        return status


def wait_for_verdict(cluster: Cluster, verdict: Verdict) -> None:
    give_up = time.monotonic() + 2 * WAIT_S
    while (seen := healthcheck(cluster)) is not verdict:
        assert time.monotonic() < give_up, f"health stayed {seen.name}; logs in {cluster.directory / 'logs'}"
        time.sleep(0.5)


def health_changes(cluster: Cluster) -> list[tuple[object, str]]:
    return [
        (e.details["serving"], str(e.details["reason"]))
        for e in cluster.audit("regional-EU")
        if e.kind is EventKind.HEALTH_CHANGE
    ]


def test_health_goes_not_serving_while_the_global_is_unreachable_and_back_when_it_answers(
    cluster: Cluster,
) -> None:
    global_member = cluster.start_global(port=free_port(), rounds=0)  # no round: the regional long-polls
    health_port = free_port()
    cluster.start_regional(
        "EU", ["silo-a"], upstream_unreachable_s=2.0, health_listen=f"127.0.0.1:{health_port}"
    )
    cluster.silo("EU", "silo-a")  # quorum: the regional now follows the global
    wait_for_verdict(cluster, Verdict.SERVING)
    assert plaintext(health_port) == SERVING

    cluster.kill(global_member)
    wait_for_verdict(cluster, Verdict.NOT_SERVING)
    assert plaintext(health_port) == NOT_SERVING
    assert plaintext(health_port, LIVENESS) == SERVING  # not ready, but alive: no restart wanted
    ((serving, reason),) = health_changes(cluster)
    assert serving is False
    assert "the global aggregator has been unreachable for" in reason

    cluster.restart("global", "global_agg", "global-restarted")
    wait_for_verdict(cluster, Verdict.SERVING)
    assert plaintext(health_port) == SERVING
    (went, came_back) = health_changes(cluster)
    assert went[0] is False
    assert came_back[0] is True
    assert "the global aggregator answers again after" in came_back[1]
    assert '"message": "health follows the upstream"' in cluster.log("regional-EU")
