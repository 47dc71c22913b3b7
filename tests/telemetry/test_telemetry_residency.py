"""Telemetry that leaves a process carries no silo identities, host names or addresses.

Spans are recorded carrying every kind of identifying detail (in attributes, events, links,
an exception, the status and the resource) and the test looks at what was exported: through
the residency filter into memory, into the spans file, and over OTLP to a real gRPC collector.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode

from jurisfed.auth.identity import Identity, Tier
from jurisfed.policy.loader import read_policy
from jurisfed.policy.model import MetadataField
from jurisfed.telemetry import (
    Attribute,
    Direction,
    Hop,
    SpanName,
    Telemetry,
    TelemetryConfig,
    required_by_policy,
)
from jurisfed.telemetry.residency import AttributeFilter, ResidencySpanExporter

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-regional-7")
INGEST = "jurisfed.regional.ingest"  # a span about one silo's upload
HOST = "db-host-3.eu.internal"
# Every string that would identify a silo or a host; none may be in what leaves.
IDENTIFYING = ("hospital-a", "eu-regional-7", HOST, "10.20.30.40", "2001:db8::7", "jurisfed://EU/silo")

ATTRIBUTES: dict[str, str | int | float] = {
    "jurisfed.silo.id": "hospital-a",
    "jurisfed.silo.example_count": 1200,
    "jurisfed.silo.update_norm": 0.8,
    "jurisfed.peer.node": "hospital-a",
    "jurisfed.peer.jurisdiction": "EU",
    "network.peer.address": "10.20.30.40",
    "net.peer.name": HOST,
    "server.address": HOST,
    "jurisfed.note": "upload from jurisfed://EU/silo/hospital-a",
    "jurisfed.retry_from": "ipv6:[2001:db8::7]:443",
    "rpc.method": "SubmitUpdate",
    "jurisfed.round.number": 3,
}
# What may leave, whatever is stripped.
COARSE = {"jurisfed.peer.jurisdiction": "EU", "rpc.method": "SubmitUpdate", "jurisfed.round.number": 3}


@pytest.fixture(autouse=True)
def _host_details_in_the_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a Kubernetes deployment would set them: OpenTelemetry adds these to every resource."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"host.name={HOST},k8s.pod.name=eu-regional-7-5d8f")


def _record_a_round(tracer_owner: Telemetry | TracerProvider) -> None:
    """A regional round with one span about one silo, carrying identifying details everywhere."""
    tracer = tracer_owner.tracer if isinstance(tracer_owner, Telemetry) else tracer_owner.get_tracer("test")
    with tracer.start_as_current_span(
        SpanName.REGIONAL_ROUND, attributes={Attribute.COHORT_SILOS: 5}
    ) as round_:
        link = Link(round_.get_span_context(), {"jurisfed.silo.id": "hospital-a", "jurisfed.hop": "silo"})
        with tracer.start_as_current_span(INGEST, attributes=ATTRIBUTES, links=[link]) as span:
            span.add_event("chunk", {"jurisfed.silo.id": "hospital-a", "jurisfed.chunk": 1})
            span.record_exception(ConnectionError(f"lost {HOST} (10.20.30.40)"))
            span.set_status(Status(StatusCode.ERROR, "hospital-a at 10.20.30.40 went away"))


def _assert_anonymous(exported: str | bytes) -> None:
    text = exported if isinstance(exported, str) else exported.decode("utf-8", errors="replace")
    leaked = [value for value in IDENTIFYING if value in text]
    assert not leaked, f"exported telemetry names {leaked}"


def test_the_filter_removes_every_identifying_detail_and_keeps_the_rest() -> None:
    recorded, exported = InMemorySpanExporter(), InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    provider.add_span_processor(
        SimpleSpanProcessor(ResidencySpanExporter(exported, frozenset(MetadataField)))
    )
    _record_a_round(provider)
    provider.shutdown()

    before = {span.name: span for span in recorded.get_finished_spans()}
    after = {span.name: span for span in exported.get_finished_spans()}
    assert any(value in before[INGEST].to_json() for value in IDENTIFYING)  # as recorded
    for span in after.values():
        _assert_anonymous(span.to_json())

    ingest, original = after[INGEST], before[INGEST]
    assert dict(ingest.attributes or {}) == COARSE
    assert (ingest.context, ingest.parent, ingest.start_time, ingest.end_time) == (
        original.context,
        original.parent,
        original.start_time,
        original.end_time,
    )
    assert [(event.name, dict(event.attributes or {})) for event in ingest.events] == [
        ("chunk", {"jurisfed.chunk": 1}),
        ("exception", {"exception.type": "ConnectionError", "exception.escaped": "False"}),
    ]
    assert [(link.context, dict(link.attributes or {})) for link in ingest.links] == [
        (after[SpanName.REGIONAL_ROUND].context, {"jurisfed.hop": "silo"})
    ]
    assert ingest.status.status_code is StatusCode.ERROR
    assert ingest.status.description is None
    assert "host.name" not in ingest.resource.attributes
    assert ingest.resource.attributes["service.name"] == original.resource.attributes["service.name"]


@pytest.mark.parametrize(
    ("field", "removed"),
    [
        (
            MetadataField.SILO_IDS,
            {"jurisfed.silo.id", "jurisfed.peer.node", "jurisfed.note"},
        ),
        (
            MetadataField.HOST_NAMES,
            {"jurisfed.peer.node", "net.peer.name", "server.address", "jurisfed.note"},
        ),
        (
            MetadataField.IP_ADDRESSES,
            {"network.peer.address", "server.address", "jurisfed.retry_from"},
        ),
        (MetadataField.PER_SILO_EXAMPLE_COUNTS, {"jurisfed.silo.example_count"}),
        (
            MetadataField.PER_SILO_METRICS,
            {"jurisfed.silo.id", "jurisfed.silo.example_count", "jurisfed.silo.update_norm"},
        ),
    ],
    ids=lambda value: value.value if isinstance(value, MetadataField) else "",
)
def test_each_policy_field_removes_its_own_attributes(field: MetadataField, removed: set[str]) -> None:
    kept = AttributeFilter(frozenset({field})).attributes(ATTRIBUTES)
    assert set(ATTRIBUTES) - set(kept) == removed


def test_nothing_to_strip_exports_spans_as_recorded() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ResidencySpanExporter(exported, frozenset())))
    _record_a_round(provider)
    provider.shutdown()
    ingest = next(span for span in exported.get_finished_spans() if span.name == INGEST)
    assert dict(ingest.attributes or {}) == ATTRIBUTES


def test_what_a_policy_requires_for_telemetry_leaving_the_jurisdiction() -> None:
    eu, india, global_ = (read_policy(POLICIES / f"{name}.yaml") for name in ("eu", "in", "global"))
    assert required_by_policy(eu, Tier.REGIONAL) == frozenset(MetadataField)
    assert required_by_policy(india, Tier.REGIONAL) == {
        MetadataField.SILO_IDS,
        MetadataField.HOST_NAMES,
        MetadataField.IP_ADDRESSES,
        MetadataField.PER_SILO_METRICS,
    }
    # Silo telemetry only goes to the regional of the same jurisdiction: the policy asks nothing.
    assert required_by_policy(eu, Tier.SILO) == frozenset()
    assert required_by_policy(global_, Tier.GLOBAL) == frozenset()


def test_the_policy_strips_even_when_the_configuration_asks_for_nothing() -> None:
    exported = InMemorySpanExporter()
    policy_strip = required_by_policy(read_policy(POLICIES / "eu.yaml"), Tier.REGIONAL)
    config = TelemetryConfig(metrics_listen="", strip_metadata=())
    with Telemetry.start(config, REGIONAL, policy_strip=policy_strip, span_exporters=[exported]) as telemetry:
        _record_a_round(telemetry)
    spans = exported.get_finished_spans()
    assert {span.name for span in spans} == {SpanName.REGIONAL_ROUND, INGEST}
    for span in spans:
        _assert_anonymous(span.to_json())


def test_the_spans_file_holds_one_anonymous_json_span_per_line(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans" / "regional.jsonl"
    with Telemetry.start(TelemetryConfig(metrics_listen="", spans_file=spans_file), REGIONAL) as telemetry:
        _record_a_round(telemetry)
    text = spans_file.read_text()
    spans = [json.loads(line) for line in text.splitlines()]
    assert {span["name"] for span in spans} == {SpanName.REGIONAL_ROUND, INGEST}
    assert len({span["context"]["trace_id"] for span in spans}) == 1
    _assert_anonymous(text)


class _TraceCollector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: object, context: grpc.ServicerContext) -> object:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsCollector(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    def Export(self, request: object, context: grpc.ServicerContext) -> object:
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[str, _TraceCollector, _MetricsCollector]]:
    """An OpenTelemetry collector as far as OTLP/gRPC goes: it keeps every request it receives."""
    traces, metrics = _TraceCollector(), _MetricsCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", traces, metrics
    finally:
        server.stop(None)


def test_what_reaches_an_otlp_collector_names_no_silo_and_no_host(
    collector: tuple[str, _TraceCollector, _MetricsCollector],
) -> None:
    endpoint, traces, metrics = collector
    config = TelemetryConfig(metrics_listen="", otlp_endpoint=endpoint, otlp_insecure=True)
    with Telemetry.start(config, REGIONAL) as telemetry:
        _record_a_round(telemetry)
        telemetry.metrics.bytes_moved(Hop.REGIONAL_GLOBAL, Direction.SENT, 4096)
    # Leaving the block shut telemetry down, which sends what is pending.

    span_names = {
        span.name
        for request in traces.requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }
    metric_names = {
        metric.name
        for request in metrics.requests
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }
    assert span_names == {SpanName.REGIONAL_ROUND, INGEST}
    assert "jurisfed_bytes" in metric_names
    for request in (*traces.requests, *metrics.requests):
        wire = request.SerializeToString()
        _assert_anonymous(wire)
        assert b"service.instance.id" not in wire
        assert b"host.name" not in wire


def test_stopping_does_not_wait_on_an_unreachable_collector() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    config = TelemetryConfig(metrics_listen="", otlp_endpoint=endpoint, otlp_insecure=True)
    telemetry = Telemetry.start(config, REGIONAL)
    _record_a_round(telemetry)
    started = time.monotonic()
    telemetry.shutdown(timeout_s=1.0)
    assert time.monotonic() - started < 3.0
