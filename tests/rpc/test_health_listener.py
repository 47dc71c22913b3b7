"""The plaintext health-only port: a real mTLS server on port 0 with its health listener on port 0,
asked over plaintext gRPC as Kubernetes' native `grpc:` probe asks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.errors import ConfigError
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.health_listener import LIVENESS
from jurisfed.rpc.server import RunningServer, Service, serve

TIMEOUT_S = 5.0
HOLD = "jurisfed.test.Hold"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Hold:
    """A service whose one method holds its call until released: a call the server must drain."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.entered.set()
        self.release.wait(TIMEOUT_S)
        return request

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            HOLD, {"Wait": grpc.unary_unary_rpc_method_handler(self.wait)}
        )
        return Service(name=HOLD, register=lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture(scope="module")
def node_tls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return issue(pki, Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path_factory.mktemp("node"))


@pytest.fixture
def hold() -> Iterator[Hold]:
    held = Hold()
    yield held
    held.release.set()


@pytest.fixture
def server(hold: Hold, node_tls: TlsFiles) -> Iterator[RunningServer]:
    with serve([hold.service()], node_tls, health_address=("127.0.0.1", 0)) as running:
        yield running


@pytest.fixture
def plaintext(server: RunningServer) -> Iterator[grpc.Channel]:
    assert server.health_port is not None
    assert server.health_port != server.port
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        yield channel


def check(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S).status
    return status


def test_the_health_port_mirrors_the_server_and_is_alive_all_along(
    server: RunningServer, plaintext: grpc.Channel
) -> None:
    assert (check(plaintext), check(plaintext, HOLD), check(plaintext, LIVENESS)) == (
        NOT_SERVING,
        NOT_SERVING,
        SERVING,
    )
    server.set_serving(True)
    assert (check(plaintext), check(plaintext, HOLD)) == (SERVING, SERVING)
    # A condition the owner reports (the regional: its upstream) holds both ports back.
    server.set_serving(False, condition="upstream")
    assert (check(plaintext), check(plaintext, HOLD), check(plaintext, LIVENESS)) == (
        NOT_SERVING,
        NOT_SERVING,
        SERVING,
    )
    server.set_serving(True, condition="upstream")
    assert check(plaintext) == SERVING
    with pytest.raises(grpc.RpcError) as caught:
        check(plaintext, "jurisfed.v1.Nothing")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_health_port_serves_nothing_but_health(
    server: RunningServer, plaintext: grpc.Channel, hold: Hold
) -> None:
    server.set_serving(True)
    hold.release.set()
    held = plaintext.unary_unary(f"/{HOLD}/Wait")
    with pytest.raises(grpc.RpcError) as caught:
        held(b"data", timeout=TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert not hold.entered.is_set()
    reflection = reflection_pb2_grpc.ServerReflectionStub(plaintext)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT_S
    )
    with pytest.raises(grpc.RpcError) as caught:
        next(answers)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_the_main_port_still_wants_a_certificate_and_answers_the_same(
    server: RunningServer, plaintext: grpc.Channel, node_tls: TlsFiles
) -> None:
    server.set_serving(True)
    with grpc.insecure_channel(server.address) as no_tls, pytest.raises(grpc.RpcError) as caught:
        check(no_tls)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    with open_channel(server.address, node_tls) as mtls:
        assert check(mtls) == check(plaintext) == SERVING


def test_draining_answers_not_serving_but_alive_then_the_port_closes(
    server: RunningServer, plaintext: grpc.Channel, node_tls: TlsFiles, hold: Hold
) -> None:
    server.set_serving(True)
    with open_channel(server.address, node_tls) as mtls:
        in_flight = mtls.unary_unary(f"/{HOLD}/Wait").future(b"x", timeout=TIMEOUT_S)
        assert hold.entered.wait(TIMEOUT_S)
        stopper = threading.Thread(target=server.stop, kwargs={"grace_s": TIMEOUT_S})
        stopper.start()
        try:
            watch = health_pb2_grpc.HealthStub(plaintext).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
            assert next(s for s in watch if s.status == NOT_SERVING)
            assert check(plaintext, LIVENESS) == SERVING  # the call is still draining
            server.set_serving(True)  # too late: a stopping server stays NOT_SERVING
            assert check(plaintext) == NOT_SERVING
        finally:
            hold.release.set()
        assert in_flight.result() == b"x"
        stopper.join(TIMEOUT_S)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as caught:
        check(plaintext, LIVENESS)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_health_port_in_use_stops_the_start(node_tls: TlsFiles, server: RunningServer) -> None:
    assert server.health_port is not None
    with (
        pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"),
        serve([], node_tls, health_address=("127.0.0.1", server.health_port)),
    ):
        pass
