"""Reachability of a peer from the outcome of calls: the threshold, the way back, and `with_retry`
reporting each attempt against a real server that answers, then is gone."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import issue
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.reachability import Change, Reachability
from jurisfed.rpc.retry import with_retry
from jurisfed.rpc.server import serve


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unreachable_only_past_the_threshold_and_reachable_at_the_next_answer() -> None:
    clock, changes = Clock(), list[Change]()
    link = Reachability("global aggregator", 30.0, changes.append, clock=clock)
    link.failed()
    clock.now += 30.0
    link.failed()
    assert link.reachable
    assert changes == []
    clock.now += 5.0
    link.failed()
    clock.now += 5.0
    link.failed()  # already unreachable: said once
    assert changes == [Change("global aggregator", False, 35.0)]
    assert not link.reachable
    clock.now += 2.0
    link.reached()
    assert changes[1:] == [Change("global aggregator", True, 42.0)]
    # An answer in between starts the count again.
    link.failed()
    clock.now += 25.0
    link.reached()
    link.failed()
    clock.now += 25.0
    link.failed()
    assert link.reachable
    assert len(changes) == 2


def test_a_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Reachability("global aggregator", 0, lambda change: None)


class Attempts:
    """A `Link` that remembers what each attempt reported."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def reached(self) -> None:
        self.outcomes.append("reached")

    def failed(self) -> None:
        self.outcomes.append("failed")


def test_with_retry_reports_answers_and_failures_to_reach(pki: Path, tmp_path: Path) -> None:
    server_tls = issue(pki, Identity("GLOBAL", Tier.GLOBAL, "global-1"), tmp_path / "global")
    client_tls = issue(pki, Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path / "regional")
    attempts, stop, log = Attempts(), threading.Event(), logging.getLogger("test")
    with serve([], server_tls) as server, open_channel(server.address, client_tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def check(service: str) -> int:
            status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
            return status

        assert with_retry("check", lambda: check(""), stop=stop, log=log, link=attempts) is not None
        # NOT_FOUND is a refusal, and a refusal is an answer: the peer was reached.
        assert with_retry("check", lambda: check("nothing"), stop=stop, log=log, link=attempts) is None
        assert attempts.outcomes == ["reached", "reached"]
        server.stop(grace_s=0)

        def gone() -> int:
            if attempts.outcomes.count("failed") == 2:
                stop.set()
            return check("")

        assert with_retry("check", gone, stop=stop, log=log, link=attempts) is None
    assert attempts.outcomes == ["reached", "reached", "failed", "failed"]
