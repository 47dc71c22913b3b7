"""Traces across the tiers: a round is one trace.

The global starts a `SpanName.ROUND` span and hands its context down in the round
announcement (`traceparent(span)`, a W3C ``traceparent`` string); the regional continues that
trace (`trace_context(announcement.traceparent)`) and hands its own round span's context to
its silos in their task, so every silo's training and upload, the regional's aggregation and
the global's reduce are spans of one trace. Every gRPC call carries the caller's context in
``traceparent`` metadata as well (`jurisfed.telemetry.interceptors`).

Only the W3C trace context crosses a hop: trace id, span id, the sampled flag. No baggage and
no ``tracestate`` is ever sent, so nothing about a silo or a host travels with the context.
"""

from __future__ import annotations

import enum
import logging

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jurisfed.auth.identity import Identity

TRACEPARENT = "traceparent"
TRACER_NAME = "jurisfed"
SERVICE_NAMESPACE = "jurisfed"

_PROPAGATOR = TraceContextTextMapPropagator()


class SpanName(enum.StrEnum):
    """The spans of a round, from the global down to each silo."""

    ROUND = "jurisfed.round"  # global: the whole round; the root of the round's trace
    GLOBAL_REDUCE = "jurisfed.global.reduce"  # global: combine the jurisdictions' aggregates
    GLOBAL_GATES = "jurisfed.global.gates"  # global: acceptance gates on the probe set
    REGIONAL_ROUND = "jurisfed.regional.round"  # regional: contract check to forward
    REGIONAL_AGGREGATE = "jurisfed.regional.aggregate"  # regional: robust rule, DP, compression
    SILO_TRAIN = "jurisfed.silo.train"  # silo: local training
    SILO_UPLOAD = "jurisfed.silo.upload"  # silo: sending its update


class Attribute(enum.StrEnum):
    """Attribute keys of jurisfed's own spans. Anything about one silo goes under ``jurisfed.silo.``."""

    ROUND = "jurisfed.round.number"
    OUTCOME = "jurisfed.round.outcome"
    JURISDICTION = "jurisfed.jurisdiction"
    TIER = "jurisfed.tier"
    NODE = "jurisfed.node"  # this process's node name: stripped as a host name
    COHORT_SILOS = "jurisfed.cohort.silos"
    SILO_ID = "jurisfed.silo.id"  # stripped as a silo id
    SILO_EXAMPLE_COUNT = "jurisfed.silo.example_count"  # stripped as a per-silo example count
    PEER_JURISDICTION = "jurisfed.peer.jurisdiction"
    PEER_TIER = "jurisfed.peer.tier"
    PEER_NODE = "jurisfed.peer.node"  # stripped as a silo id and as a host name


def node_resource(identity: Identity) -> Resource:
    """What every span and metric of this process says about where it comes from."""
    return Resource.create(
        {
            "service.name": f"jurisfed-{identity.tier.value}",
            "service.namespace": SERVICE_NAMESPACE,
            "service.instance.id": identity.node,
            Attribute.JURISDICTION.value: identity.jurisdiction,
            Attribute.TIER.value: identity.tier.value,
        }
    )


def tracer_provider(resource: Resource) -> TracerProvider:
    """A provider for one process; exporters are added by `jurisfed.telemetry.node`.

    Sampling follows the parent's sampled flag, and samples every root (rounds are few).
    It is not installed as OpenTelemetry's global provider: tiers pass their tracer along.
    """
    # Shut down by `Telemetry.shutdown`, bounded in time; the SDK's own exit hook would wait a
    # minute on an unreachable collector.
    return TracerProvider(resource=resource, shutdown_on_exit=False)


def traceparent(span: trace.Span | None = None) -> str:
    """The W3C ``traceparent`` of `span` (default: the current one); "" when there is none."""
    carrier: dict[str, str] = {}
    target = span if span is not None else trace.get_current_span()
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(target))
    return carrier.get(TRACEPARENT, "")


def trace_context(value: str) -> Context:
    """The context to start a span in so that it continues the trace `value` names.

    An empty or malformed `value` gives an empty context: the span starts a trace of its own.
    """
    return _PROPAGATOR.extract({TRACEPARENT: value}) if value else Context()


class TraceIdsFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` of the current span to log records, so that JSON log
    lines can be matched with their round's trace. Records outside a span are left as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        return True
