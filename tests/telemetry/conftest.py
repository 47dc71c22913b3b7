"""Telemetry fixtures: a process's telemetry whose spans land in memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_support import LOCAL_ONLY, Recorder

from jurisfed.auth.identity import Identity
from jurisfed.telemetry import Telemetry


@pytest.fixture
def recorded() -> Iterator[Recorder]:
    """Start telemetry for a node, its spans in memory, unfiltered; shut down after the test."""
    started: list[Telemetry] = []

    def start(identity: Identity) -> tuple[Telemetry, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        telemetry = Telemetry.start(LOCAL_ONLY, identity, span_exporters=[exporter])
        started.append(telemetry)
        return telemetry, exporter

    yield start
    for telemetry in started:
        telemetry.shutdown()
