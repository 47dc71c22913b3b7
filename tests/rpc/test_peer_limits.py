"""Per-peer caps over real mTLS: one node cannot hog the server's threads or flood it with calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jurisfed.auth.identity import Identity, Tier, peer_identity
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.errors import ConfigError
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.peer_limits import PeerLimitInterceptor, PeerLimits
from jurisfed.rpc.server import RunningServer, Service, serve

SERVICE = "jurisfed.test.Slow"
TIMEOUT_S = 10.0
HOG = Identity("EU", Tier.SILO, "hog")
NEIGHBOUR = Identity("EU", Tier.SILO, "neighbour")


class Slow:
    """A method that holds its call until released, and counts who it served."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.served: list[str] = []

    def hold(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.entered.release()
        self.release.wait(TIMEOUT_S)
        self.served.append(peer_identity(context).node)
        return b"ok"

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Hold": grpc.unary_unary_rpc_method_handler(self.hold)}
        )
        return Service(name=SERVICE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def slow() -> Slow:
    return Slow()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(pki: Path, tmp_path: Path, slow: Slow, clock: Clock) -> Iterator[RunningServer]:
    limits = PeerLimitInterceptor(PeerLimits(max_in_flight=2, calls_per_s=1.0, burst=4), clock=clock)
    tls = issue(pki, Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path / "server")
    with serve([slow.service()], tls, interceptors=[limits]) as running:
        running.set_serving(True)
        yield running


def channel_of(pki: Path, tmp_path: Path, server: RunningServer, who: Identity) -> grpc.Channel:
    files: TlsFiles = issue(pki, who, tmp_path / who.node)
    return open_channel(server.address, files)


def hold(channel: grpc.Channel) -> bytes:
    response: bytes = channel.unary_unary(f"/{SERVICE}/Hold")(b"", timeout=TIMEOUT_S)
    return response


def test_a_peer_over_its_in_flight_cap_is_refused_while_others_are_served(
    pki: Path, tmp_path: Path, server: RunningServer, slow: Slow
) -> None:
    hog = channel_of(pki, tmp_path, server, HOG)
    neighbour = channel_of(pki, tmp_path, server, NEIGHBOUR)
    with futures.ThreadPoolExecutor(max_workers=3) as pool:
        held = [pool.submit(hold, hog) for _ in range(2)]
        for _ in held:
            assert slow.entered.acquire(timeout=TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as refused:
            hold(hog)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "jurisfed://EU/silo/hog already has 2 calls in flight" in refused.value.details()
        other = pool.submit(hold, neighbour)  # another peer still gets a thread
        assert slow.entered.acquire(timeout=TIMEOUT_S)
        # Health is never capped, so probes see the server even while a peer is at its cap.
        status = health_pb2_grpc.HealthStub(hog).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        slow.release.set()
        assert [f.result() for f in [*held, other]] == [b"ok"] * 3
    assert sorted(slow.served) == ["hog", "hog", "neighbour"]
    hog.close()
    neighbour.close()


def test_a_peer_over_its_call_rate_is_refused_until_its_bucket_refills(
    pki: Path, tmp_path: Path, server: RunningServer, slow: Slow, clock: Clock
) -> None:
    slow.release.set()
    hog = channel_of(pki, tmp_path, server, HOG)
    for _ in range(4):  # the burst
        assert hold(hog) == b"ok"
    with pytest.raises(grpc.RpcError) as refused:
        hold(hog)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "calls more than 1 times a second" in refused.value.details()
    clock.now += 1.0  # one call's worth of tokens
    assert hold(hog) == b"ok"
    assert len(slow.served) == 5  # the refused call never reached the handler
    hog.close()


def test_limits_that_cannot_work_are_config_errors() -> None:
    for bad in ({"max_in_flight": 0}, {"calls_per_s": 0.0}, {"burst": 0}):
        with pytest.raises(ConfigError):
            PeerLimits(**bad)  # type: ignore[arg-type]
