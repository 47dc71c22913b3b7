"""The telemetry of one process (a silo, a regional, the global): its tracer, its metrics, and
where they go.

    telemetry = Telemetry.start(config.telemetry, identity, policy_strip=required_by_policy(policy, tier))
    serve(services, tls, interceptors=[telemetry.server_interceptor()])
    channel = grpc.intercept_channel(open_channel(address, tls), telemetry.client_interceptor())
    telemetry.metrics.round_closed(...);  with telemetry.tracer.start_as_current_span(...): ...
    telemetry.shutdown()  # or use it as a context manager

Everything that leaves the process passes the residency filter: spans exported over OTLP, to
the spans file or to an exporter given to `start` lose the attributes of `strip` (the
configuration's ``strip_metadata`` plus what the policy requires); metrics carry only their
documented labels and a resource without the node's name, whoever reads them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from jurisfed.auth.identity import Identity
from jurisfed.errors import ConfigError
from jurisfed.policy.model import MetadataField
from jurisfed.telemetry.instruments import METER_NAME, TierMetrics
from jurisfed.telemetry.interceptors import TracingClientInterceptor, TracingServerInterceptor
from jurisfed.telemetry.metrics import MetricsEndpoint, meter_provider
from jurisfed.telemetry.residency import AttributeFilter, ResidencySpanExporter
from jurisfed.telemetry.settings import TelemetryConfig
from jurisfed.telemetry.tracing import TRACER_NAME, node_resource, tracer_provider

_LOG = logging.getLogger("jurisfed.telemetry")

_EVERY_FIELD = frozenset(MetadataField)
DEFAULT_SHUTDOWN_S = 5.0


@dataclass(frozen=True)
class Instrumentation:
    """What tier code records through: the process's tracer and the tier's metrics.

    `Instrumentation.off()` records nothing, for code run without a telemetry pipeline.
    """

    tracer: trace.Tracer
    metrics: TierMetrics

    @classmethod
    def off(cls) -> Instrumentation:
        return cls(trace.NoOpTracer(), TierMetrics(NoOpMeter(METER_NAME)))


class Telemetry:
    """A started telemetry pipeline; build it with `Telemetry.start`."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        metrics_endpoint: MetricsEndpoint | None,
        strip: frozenset[MetadataField],
        spans_file: IO[str] | None,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._spans_file = spans_file
        self.metrics_endpoint = metrics_endpoint
        self.strip = strip
        self.tracer: trace.Tracer = tracer_provider.get_tracer(TRACER_NAME)
        self.metrics = TierMetrics(meter_provider.get_meter(METER_NAME))
        self._stopped = False

    @classmethod
    def start(
        cls,
        config: TelemetryConfig,
        identity: Identity,
        *,
        policy_strip: frozenset[MetadataField] = frozenset(),
        span_exporters: Sequence[SpanExporter] = (),
        metric_readers: Sequence[MetricReader] = (),
    ) -> Telemetry:
        """Set up tracing and metrics for the node `identity`, and serve its scrape endpoint.

        `policy_strip` is what the node's residency policy requires removed from telemetry
        that leaves its jurisdiction (`residency.required_by_policy`); it is stripped whatever
        the configuration says. `span_exporters` and `metric_readers` (tests) receive what
        OTLP would: spans after the residency filter, metrics as they are.
        """
        strip = config.strip_fields | policy_strip
        resource = node_resource(identity)
        credentials = _otlp_credentials(config)
        readers = list(metric_readers)
        if config.otlp_endpoint:
            metrics_out = OTLPMetricExporter(
                endpoint=config.otlp_endpoint, insecure=config.otlp_insecure, credentials=credentials
            )
            interval_ms = config.metrics_export_interval_s * 1000
            readers.append(PeriodicExportingMetricReader(metrics_out, export_interval_millis=interval_ms))
        spans_file = _open_spans_file(config.spans_file) if config.spans_file else None
        try:
            # Metrics never name the node or its host, whoever scrapes them.
            meters, endpoint = meter_provider(
                AttributeFilter(_EVERY_FIELD).resource(resource),
                metrics_listen=config.metrics_listen,
                readers=readers,
            )
        except BaseException:
            if spans_file is not None:
                spans_file.close()
            raise
        tracers = tracer_provider(resource)
        for exporter in span_exporters:
            tracers.add_span_processor(SimpleSpanProcessor(ResidencySpanExporter(exporter, strip)))
        if config.otlp_endpoint:
            spans_out = OTLPSpanExporter(
                endpoint=config.otlp_endpoint, insecure=config.otlp_insecure, credentials=credentials
            )
            tracers.add_span_processor(BatchSpanProcessor(ResidencySpanExporter(spans_out, strip)))
        if spans_file is not None:
            lines = ConsoleSpanExporter(out=spans_file, formatter=_json_line)
            tracers.add_span_processor(BatchSpanProcessor(ResidencySpanExporter(lines, strip)))
        if endpoint is not None:
            _LOG.info("serving Prometheus metrics", extra={"metrics_url": endpoint.url})
        return cls(
            tracer_provider=tracers,
            meter_provider=meters,
            metrics_endpoint=endpoint,
            strip=strip,
            spans_file=spans_file,
        )

    @property
    def instrumentation(self) -> Instrumentation:
        return Instrumentation(self.tracer, self.metrics)

    def server_interceptor(self) -> TracingServerInterceptor:
        """For ``serve(..., interceptors=[...])``: a SERVER span per call, continuing the caller's trace."""
        return TracingServerInterceptor(self.tracer)

    def client_interceptor(self) -> TracingClientInterceptor:
        """For ``grpc.intercept_channel(channel, ...)``: a CLIENT span per call, sent as ``traceparent``."""
        return TracingClientInterceptor(self.tracer)

    def shutdown(self, timeout_s: float = DEFAULT_SHUTDOWN_S) -> None:
        """Stop the scrape endpoint and export what is pending (OTLP, spans file); idempotent.

        Returns within about `timeout_s` even when the collector is unreachable (OpenTelemetry
        retries for a minute): a stopping tier must not wait on its telemetry. What is still
        being exported then is given up when the process exits.
        """
        if self._stopped:
            return
        self._stopped = True
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        flushing = threading.Thread(target=self._flush, name="jurisfed-telemetry-flush", daemon=True)
        flushing.start()
        flushing.join(timeout_s)
        if flushing.is_alive():
            _LOG.warning("telemetry not exported after %g s; giving up on it", timeout_s)

    def _flush(self) -> None:
        self._meter_provider.shutdown()
        self._tracer_provider.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK
        if self._spans_file is not None:
            self._spans_file.close()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.shutdown()


def _otlp_credentials(config: TelemetryConfig) -> grpc.ChannelCredentials | None:
    """TLS trusting `otlp_ca_cert`; None lets the exporter use the system's trust store (or plaintext)."""
    if config.otlp_ca_cert is None:
        return None
    try:
        ca_cert = config.otlp_ca_cert.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read otlp_ca_cert {config.otlp_ca_cert}: {error.strerror}") from error
    return grpc.ssl_channel_credentials(root_certificates=ca_cert)


def _open_spans_file(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot open spans_file {path}: {error.strerror}") from error


def _json_line(span: ReadableSpan) -> str:
    """The span as one line of JSON (`to_json` indents over several lines)."""
    return json.dumps(json.loads(span.to_json())) + "\n"
