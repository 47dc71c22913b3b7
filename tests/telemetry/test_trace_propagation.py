"""A span started by a caller is the ancestor of the server's span, across real gRPC calls over mTLS.

The silo side and the regional side each have their own telemetry (their own tracer provider
and exporter), as two processes would: the only link between them is the ``traceparent``
metadata the client interceptor sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from telemetry_support import LOCAL_ONLY, wait_for_span

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import issue
from jurisfed.errors import NotAllowed
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import RunningServer, Service, serve
from jurisfed.telemetry import Telemetry

SERVICE = "jurisfed.test.Echo"
TIMEOUT_S = 5.0
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
SILO = Identity("EU", Tier.SILO, "hospital-a")


class Echo:
    """Handlers that open a span of their own, so we see that the server span is current in them."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._tracer.start_as_current_span("handler.work"):
            return request

    def upload(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        with self._tracer.start_as_current_span("handler.work"):
            return b"".join(requests)

    def download(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for part in request:
            with self._tracer.start_as_current_span("handler.work"):
                yield bytes([part])

    def refuse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise NotAllowed("the policy refuses this")

    def metadata(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return ",".join(sorted(key for key, _ in context.invocation_metadata())).encode()

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                "Download": grpc.unary_stream_rpc_method_handler(self.download),
                "Refuse": grpc.unary_unary_rpc_method_handler(self.refuse),
                "Metadata": grpc.unary_unary_rpc_method_handler(self.metadata),
            },
        )
        return Service(name=SERVICE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture(scope="module")
def regional_spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def silo_spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def regional(regional_spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    with Telemetry.start(LOCAL_ONLY, REGIONAL, span_exporters=[regional_spans]) as telemetry:
        yield telemetry


@pytest.fixture(scope="module")
def silo(silo_spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    with Telemetry.start(LOCAL_ONLY, SILO, span_exporters=[silo_spans]) as telemetry:
        yield telemetry


@pytest.fixture(scope="module")
def server(
    regional: Telemetry, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tls = issue(pki, REGIONAL, tmp_path_factory.mktemp("regional"))
    services = [Echo(regional.tracer).service()]
    with serve(services, tls, interceptors=[regional.server_interceptor()]) as running:
        running.set_serving(True)
        yield running


@pytest.fixture(scope="module")
def channel(
    server: RunningServer, silo: Telemetry, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[grpc.Channel]:
    tls = issue(pki, SILO, tmp_path_factory.mktemp("silo"))
    with open_channel(server.address, tls) as plain:
        yield grpc.intercept_channel(plain, silo.client_interceptor())


@pytest.fixture(autouse=True)
def _fresh_spans(regional_spans: InMemorySpanExporter, silo_spans: InMemorySpanExporter) -> None:
    regional_spans.clear()
    silo_spans.clear()


def _assert_chain(
    caller: trace.Span, method: str, silo_spans: InMemorySpanExporter, regional_spans: InMemorySpanExporter
) -> tuple[ReadableSpan, ReadableSpan]:
    """caller -> CLIENT span (silo) -> SERVER span (regional), all in the caller's trace."""
    client = wait_for_span(silo_spans, f"{SERVICE}/{method}")
    server = wait_for_span(regional_spans, f"{SERVICE}/{method}")
    caller_context = caller.get_span_context()
    assert client.kind is SpanKind.CLIENT
    assert server.kind is SpanKind.SERVER
    assert client.parent is not None
    assert client.parent.span_id == caller_context.span_id
    assert server.parent is not None
    assert server.parent.is_remote
    assert server.parent.span_id == client.context.span_id
    assert {client.context.trace_id, server.context.trace_id} == {caller_context.trace_id}
    return client, server


def _children(exporter: InMemorySpanExporter, parent: ReadableSpan, name: str) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.name == name and span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def test_a_unary_call_continues_the_callers_trace_on_the_server(
    channel: grpc.Channel,
    silo: Telemetry,
    silo_spans: InMemorySpanExporter,
    regional_spans: InMemorySpanExporter,
) -> None:
    with silo.tracer.start_as_current_span("silo.register") as caller:
        assert channel.unary_unary(f"/{SERVICE}/Unary")(b"hello", timeout=TIMEOUT_S) == b"hello"

    client, server = _assert_chain(caller, "Unary", silo_spans, regional_spans)
    assert len(_children(regional_spans, server, "handler.work")) == 1
    assert server.attributes is not None
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == SERVICE
    assert server.attributes["rpc.method"] == "Unary"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["network.peer.address"] == "127.0.0.1"
    # The silo's certificate names it: the regional's own trace says which silo called.
    assert server.attributes["jurisfed.peer.jurisdiction"] == "EU"
    assert server.attributes["jurisfed.peer.tier"] == "silo"
    assert server.attributes["jurisfed.peer.node"] == "hospital-a"
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 0


def test_a_client_streaming_upload_is_one_server_span_covering_the_whole_stream(
    channel: grpc.Channel,
    silo: Telemetry,
    silo_spans: InMemorySpanExporter,
    regional_spans: InMemorySpanExporter,
) -> None:
    chunks = [b"chunk-1", b"chunk-2", b"chunk-3"]
    with silo.tracer.start_as_current_span("silo.upload") as caller:
        assert channel.stream_unary(f"/{SERVICE}/Upload")(iter(chunks), timeout=TIMEOUT_S) == b"".join(chunks)

    _, server = _assert_chain(caller, "Upload", silo_spans, regional_spans)
    assert len(_children(regional_spans, server, "handler.work")) == 1
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == 0


def test_a_server_stream_keeps_its_span_current_for_every_response_and_ends_with_the_stream(
    channel: grpc.Channel,
    silo: Telemetry,
    silo_spans: InMemorySpanExporter,
    regional_spans: InMemorySpanExporter,
) -> None:
    with silo.tracer.start_as_current_span("silo.fetch_model") as caller:
        parts = list(channel.unary_stream(f"/{SERVICE}/Download")(b"abc", timeout=TIMEOUT_S))
    assert parts == [b"a", b"b", b"c"]

    _, server = _assert_chain(caller, "Download", silo_spans, regional_spans)
    work = _children(regional_spans, server, "handler.work")
    assert len(work) == 3
    assert server.end_time is not None
    assert all(span.end_time is not None and span.end_time <= server.end_time for span in work)


def test_a_refused_call_keeps_its_status_for_the_peer_and_records_it_on_both_spans(
    channel: grpc.Channel,
    silo: Telemetry,
    silo_spans: InMemorySpanExporter,
    regional_spans: InMemorySpanExporter,
) -> None:
    with silo.tracer.start_as_current_span("silo.submit") as caller, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(f"/{SERVICE}/Refuse")(b"update", timeout=TIMEOUT_S)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "the policy refuses this"

    client, server = _assert_chain(caller, "Refuse", silo_spans, regional_spans)
    denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
    for span in (client, server):
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == denied
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "PERMISSION_DENIED"
    assert [event.attributes["exception.type"] for event in server.events if event.attributes] == [
        "jurisfed.errors.NotAllowed"
    ]


def test_only_the_traceparent_crosses_never_baggage_or_tracestate(
    channel: grpc.Channel, silo: Telemetry
) -> None:
    with_baggage = baggage.set_baggage("jurisfed.silo.id", "hospital-a")
    token = context.attach(with_baggage)
    try:
        with silo.tracer.start_as_current_span("silo.call"):
            received = channel.unary_unary(f"/{SERVICE}/Metadata")(b"", timeout=TIMEOUT_S).decode()
    finally:
        context.detach(token)
    keys = set(received.split(","))
    assert "traceparent" in keys
    assert not keys & {"baggage", "tracestate"}


def test_health_checks_are_not_traced(
    channel: grpc.Channel, regional_spans: InMemorySpanExporter, silo_spans: InMemorySpanExporter
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert regional_spans.get_finished_spans() == ()
    assert silo_spans.get_finished_spans() == ()
