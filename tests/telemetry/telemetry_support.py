"""Helpers shared by the telemetry tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jurisfed.auth.identity import Identity
from jurisfed.telemetry import Telemetry, TelemetryConfig

# No scrape endpoint, and nothing stripped: for tests that look at spans as they were recorded.
LOCAL_ONLY = TelemetryConfig(metrics_listen="", strip_metadata=())

# The `recorded` fixture: starts a node's telemetry, returns it and the exporter of its spans.
Recorder = Callable[[Identity], tuple[Telemetry, InMemorySpanExporter]]


def wait_for_span(exporter: InMemorySpanExporter, name: str, timeout_s: float = 5.0) -> ReadableSpan:
    """The one finished span called `name`; client spans of streams end on a gRPC thread."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [span for span in exporter.get_finished_spans() if span.name == name]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} spans called {name}, expected one")
        if found:
            return found[0]
        if time.monotonic() > deadline:
            names = [span.name for span in exporter.get_finished_spans()]
            raise AssertionError(f"no span called {name} after {timeout_s} s; finished: {names}")
        time.sleep(0.01)
