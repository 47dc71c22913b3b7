"""Telemetry: OpenTelemetry traces and metrics, with residency applied to what leaves a process.

  settings.py      TelemetryConfig, the `telemetry:` section of every tier's config file
  node.py          Telemetry: one process's tracer, metrics, scrape endpoint and exporters
  tracing.py       span names and attributes of a round's trace; traceparent hand-off
  interceptors.py  gRPC client and server interceptors carrying `traceparent` on every call
  instruments.py   every metric (name, unit, labels) and TierMetrics, how tiers record them
  metrics.py       the meter provider and the Prometheus scrape endpoint
  residency.py     what is removed from telemetry before it leaves (policy strip_metadata)

Names, units and configuration: docs/observability.md.
"""

from jurisfed.telemetry.instruments import Direction, DropoutReason, Hop, RoundOutcome, TierMetrics
from jurisfed.telemetry.node import Instrumentation, Telemetry
from jurisfed.telemetry.residency import required_by_policy
from jurisfed.telemetry.settings import TelemetryConfig
from jurisfed.telemetry.tracing import Attribute, SpanName, TraceIdsFilter, trace_context, traceparent

__all__ = [
    "Attribute",
    "Direction",
    "DropoutReason",
    "Hop",
    "Instrumentation",
    "RoundOutcome",
    "SpanName",
    "Telemetry",
    "TelemetryConfig",
    "TierMetrics",
    "TraceIdsFilter",
    "required_by_policy",
    "trace_context",
    "traceparent",
]
