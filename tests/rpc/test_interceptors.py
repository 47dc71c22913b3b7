"""Errors raised by handlers of every RPC kind reach the peer as statuses, never as stack traces."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.errors import JurisfedError
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import RunningServer, Service, serve

TIMEOUT_S = 5.0
SERVICE = "jurisfed.test.Faulty"
SECRET = "db password is hunter2"
KINDS = ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


def _all_errors() -> list[type[JurisfedError]]:
    """The exception tree of jurisfed.errors, where every status is defined (others inherit one)."""
    found: list[type[JurisfedError]] = [JurisfedError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub.__module__ == JurisfedError.__module__)
    return found


ERRORS = {cls.__name__: cls for cls in _all_errors()}


def _act(command: bytes, context: grpc.ServicerContext) -> bytes:
    """What the handlers do with a request: echo it, or fail as the request says."""
    name = command.decode()
    if name in ERRORS:
        raise ERRORS[name](f"{name} happened: details for the peer")
    if name == "boom":
        raise RuntimeError(SECRET)
    if name == "abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "the handler aborted by itself")
    return command


class Faulty:
    """One handler of each RPC kind; a streaming response yields b"first" before acting."""

    def __init__(self) -> None:
        self.cancelled_reader_done = threading.Event()
        self.reader_started = threading.Event()

    def unary_unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return _act(request, context)

    def unary_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        yield _act(request, context)

    def stream_unary(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return _act(b"".join(requests), context)

    def stream_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        yield _act(b"".join(requests), context)

    def slow_reader(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        try:
            for _ in requests:
                self.reader_started.set()
            return b"done"
        finally:
            self.cancelled_reader_done.set()

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "unary_unary": grpc.unary_unary_rpc_method_handler(self.unary_unary),
                "unary_stream": grpc.unary_stream_rpc_method_handler(self.unary_stream),
                "stream_unary": grpc.stream_unary_rpc_method_handler(self.stream_unary),
                "stream_stream": grpc.stream_stream_rpc_method_handler(self.stream_stream),
                "slow_reader": grpc.stream_unary_rpc_method_handler(self.slow_reader),
            },
        )
        return Service(name=SERVICE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture(scope="module")
def faulty() -> Faulty:
    return Faulty()


@pytest.fixture(scope="module")
def server(faulty: Faulty, pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tls = issue(pki, Identity("EU", Tier.REGIONAL, "eu-1"), tmp_path_factory.mktemp("regional"))
    with serve([faulty.service()], tls) as running:
        running.set_serving(True)
        yield running


@pytest.fixture(scope="module")
def client_tls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return issue(pki, Identity("EU", Tier.SILO, "hospital-a"), tmp_path_factory.mktemp("silo"))


@pytest.fixture(scope="module")
def channel(server: RunningServer, client_tls: TlsFiles) -> Iterator[grpc.Channel]:
    with open_channel(server.address, client_tls) as channel:
        yield channel


def _invoke(channel: grpc.Channel, kind: str, command: bytes) -> list[bytes]:
    """Call the handler of `kind` with `command`; the responses it sent before any error."""
    method = f"/{SERVICE}/{kind}"
    factory: Callable[[str], Any] = getattr(channel, kind)
    call = factory(method)
    request: Any = command if kind.startswith("unary_") else iter([command[:2], command[2:]])
    if kind.endswith("_unary"):
        return [call(request, timeout=TIMEOUT_S)]
    received: list[bytes] = []
    for response in call(request, timeout=TIMEOUT_S):
        received.append(response)
    return received


@pytest.mark.parametrize("kind", KINDS)
def test_handlers_that_succeed_are_untouched(channel: grpc.Channel, kind: str) -> None:
    expected = [b"fine"] if kind.endswith("_unary") else [b"first", b"fine"]
    assert _invoke(channel, kind, b"fine") == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("error", list(ERRORS.values()), ids=list(ERRORS))
def test_a_jurisfed_error_reaches_the_peer_as_its_status_and_message(
    channel: grpc.Channel, kind: str, error: type[JurisfedError]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _invoke(channel, kind, error.__name__.encode())
    assert caught.value.code() == error.status
    assert caught.value.details() == f"{error.__name__} happened: details for the peer"


@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
def test_a_stream_that_fails_midway_delivers_what_came_before(channel: grpc.Channel, kind: str) -> None:
    method = f"/{SERVICE}/{kind}"
    request: Any = b"NotAllowed" if kind == "unary_stream" else iter([b"NotAllowed"])
    responses = getattr(channel, kind)(method)(request, timeout=TIMEOUT_S)
    assert next(responses) == b"first"
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("kind", KINDS)
def test_an_unexpected_error_is_internal_with_a_reference_and_no_details(
    channel: grpc.Channel, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jurisfed.rpc")
    with pytest.raises(grpc.RpcError) as caught:
        _invoke(channel, kind, b"boom")

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details()
    match = re.fullmatch(r"internal error \(reference ([0-9a-f]{8})\)", details)
    assert match is not None, details
    assert SECRET not in details
    assert "Traceback" not in details
    assert "RuntimeError" not in details
    # The server's operator finds the traceback under the same reference.
    logged = [r for r in caplog.records if r.name == "jurisfed.rpc" and match.group(1) in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)
    assert kind in logged[0].getMessage()


@pytest.mark.parametrize("kind", KINDS)
def test_a_handler_that_aborts_by_itself_keeps_its_status(
    channel: grpc.Channel, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jurisfed.rpc")
    with pytest.raises(grpc.RpcError) as caught:
        _invoke(channel, kind, b"abort")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "the handler aborted by itself"
    assert not [r for r in caplog.records if r.name == "jurisfed.rpc"]


def test_a_client_that_cancels_an_upload_is_not_logged_as_an_error(
    channel: grpc.Channel, faulty: Faulty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jurisfed.rpc")
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"chunk"
        release.wait(TIMEOUT_S)

    future = channel.stream_unary(f"/{SERVICE}/slow_reader").future(requests(), timeout=TIMEOUT_S)
    assert faulty.reader_started.wait(TIMEOUT_S)
    future.cancel()
    release.set()
    assert faulty.cancelled_reader_done.wait(TIMEOUT_S)

    assert future.cancelled()
    assert not [r for r in caplog.records if r.name == "jurisfed.rpc" and r.levelno >= logging.WARNING]
