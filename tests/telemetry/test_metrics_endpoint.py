"""The Prometheus endpoint serves the documented metrics over HTTP, with coarse labels only."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from jurisfed.auth.identity import Identity, Tier
from jurisfed.errors import ConfigError
from jurisfed.policy.model import Decision
from jurisfed.telemetry import Direction, DropoutReason, Hop, RoundOutcome, Telemetry, TelemetryConfig
from jurisfed.telemetry.instruments import INSTRUMENTS, METER_NAME, Kind
from jurisfed.telemetry.metrics import meter_provider

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-regional-7")
SCRAPE = TelemetryConfig(metrics_listen="127.0.0.1:0")


def _scrape(telemetry: Telemetry) -> str:
    assert telemetry.metrics_endpoint is not None
    with urllib.request.urlopen(telemetry.metrics_endpoint.url, timeout=5) as response:
        assert response.status == 200
        page: str = response.read().decode()
    return page


def _samples(page: str) -> dict[str, list[Sample]]:
    by_name: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    return by_name


def _record_one_round(telemetry: Telemetry) -> None:
    metrics = telemetry.metrics
    metrics.round_closed(outcome=RoundOutcome.COMMITTED, duration_s=42.0, selected=5, participants=4)
    metrics.dropout(DropoutReason.DEADLINE)
    metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.RECEIVED, 1234)
    metrics.bytes_moved(Hop.REGIONAL_GLOBAL, Direction.SENT, 99)
    metrics.update_norm(0.7)
    metrics.update_norm(math.nan)  # an outlier's norm: not recorded
    metrics.clipped_fraction(0.25)
    metrics.evaluated(metric="accuracy", value=0.91, delta=0.02, jurisdiction="EU")
    metrics.privacy_spent(jurisdiction="EU", epsilon=1.5, delta=1e-6, epsilon_limit=3.0)
    metrics.quarantined()
    metrics.readmitted(3600.0)
    metrics.policy_decision(
        Decision(False, "default-deny", "no rule allows it", "eu-residency", 1, "sha256:0")
    )


@pytest.fixture
def regional() -> Iterator[Telemetry]:
    with Telemetry.start(SCRAPE, REGIONAL) as telemetry:
        yield telemetry


def test_the_scrape_endpoint_serves_every_documented_metric_with_its_labels(regional: Telemetry) -> None:
    _record_one_round(regional)
    samples = _samples(_scrape(regional))

    for instrument in INSTRUMENTS:
        name = instrument.prometheus_name + ("_count" if instrument.kind is Kind.HISTOGRAM else "")
        assert name in samples, f"{name} is documented but not served"
        for sample in samples[name]:
            assert set(sample.labels) == set(instrument.labels), name

    def value(name: str, **labels: str) -> float:
        (match,) = [s.value for s in samples[name] if s.labels == labels]
        return match

    assert value("jurisfed_bytes_total", hop="silo_regional", direction="received") == 1234
    assert value("jurisfed_bytes_total", hop="regional_global", direction="sent") == 99
    assert value("jurisfed_dropouts_total", reason="deadline") == 1
    assert value("jurisfed_round_participants") == 4
    assert value("jurisfed_round_selected") == 5
    assert value("jurisfed_round_duration_seconds_sum", outcome="committed") == 42.0
    assert value("jurisfed_update_norm_count") == 1
    assert value("jurisfed_privacy_epsilon_spent", jurisdiction="EU") == 1.5
    assert value("jurisfed_eval_delta", metric="accuracy", jurisdiction="EU") == pytest.approx(0.02)
    assert value("jurisfed_policy_decisions_total", decision="deny", rule="default-deny") == 1
    assert value("jurisfed_quarantine_remediation_seconds_sum") == 3600.0
    assert value("process_resident_memory_bytes") > 0


def test_the_page_never_names_the_node_or_its_host(regional: Telemetry) -> None:
    _record_one_round(regional)
    page = _scrape(regional)
    (target,) = _samples(page)["target_info"]
    assert target.labels["jurisfed_jurisdiction"] == "EU"
    assert target.labels["jurisfed_tier"] == "regional"
    assert REGIONAL.node not in page
    assert "instance_id" not in page
    assert "host_name" not in page


def test_labels_not_documented_are_dropped_before_any_reader_sees_them() -> None:
    reader = InMemoryMetricReader()
    provider, endpoint = meter_provider(Resource.create({}), metrics_listen="", readers=[reader])
    assert endpoint is None
    try:
        dropouts = provider.get_meter(METER_NAME).create_counter("jurisfed_dropouts")
        dropouts.add(1, {"reason": "deadline", "jurisfed.silo.id": "hospital-a", "host.name": "db-7"})
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    points = [
        point
        for resource_metrics in data.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    assert [dict(point.attributes or {}) for point in points] == [{"reason": "deadline"}]


def test_each_process_serves_only_its_own_metrics() -> None:
    other = Identity("IN", Tier.REGIONAL, "in-regional-1")
    with Telemetry.start(SCRAPE, REGIONAL) as eu, Telemetry.start(SCRAPE, other) as india:
        eu.metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.RECEIVED, 10)
        india.metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.RECEIVED, 7)
        eu_bytes = _samples(_scrape(eu))["jurisfed_bytes_total"]
        india_bytes = _samples(_scrape(india))["jurisfed_bytes_total"]
    assert [sample.value for sample in eu_bytes] == [10]
    assert [sample.value for sample in india_bytes] == [7]


def test_shutdown_stops_the_endpoint_and_frees_its_port() -> None:
    telemetry = Telemetry.start(SCRAPE, REGIONAL)
    assert telemetry.metrics_endpoint is not None
    url, port = telemetry.metrics_endpoint.url, telemetry.metrics_endpoint.port
    telemetry.shutdown()
    telemetry.shutdown()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_an_empty_metrics_listen_serves_nothing() -> None:
    with Telemetry.start(TelemetryConfig(metrics_listen=""), REGIONAL) as telemetry:
        assert telemetry.metrics_endpoint is None
        telemetry.metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.SENT, 1)  # recording still works


def test_a_port_in_use_is_a_config_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=address):
            Telemetry.start(TelemetryConfig(metrics_listen=address), REGIONAL)


@pytest.mark.parametrize(
    "record",
    [
        lambda t: t.metrics.privacy_spent(jurisdiction="hospital-a", epsilon=1, delta=0, epsilon_limit=3),
        lambda t: t.metrics.evaluated(metric="hospital-a.accuracy", value=1, delta=0, jurisdiction="EU"),
        lambda t: t.metrics.bytes_moved(Hop.SILO_REGIONAL, Direction.SENT, -1),
        lambda t: t.metrics.clipped_fraction(1.5),
    ],
    ids=["silo-as-jurisdiction", "silo-in-metric-name", "negative-bytes", "fraction-above-one"],
)
def test_label_values_that_are_not_coarse_and_impossible_values_are_refused(
    regional: Telemetry, record: Callable[[Telemetry], None]
) -> None:
    with pytest.raises(ValueError, match=r"never negative|between 0 and 1|must be"):
        record(regional)


def test_the_docs_list_every_metric_with_its_kind_unit_and_labels() -> None:
    rows = {
        line.split("|")[1].strip(" `"): line
        for line in DOCS.read_text().splitlines()
        if line.startswith("| `")
    }
    for instrument in INSTRUMENTS:
        row = rows.get(instrument.prometheus_name)
        assert row is not None, f"docs/observability.md has no row for {instrument.prometheus_name}"
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[1] == instrument.kind.value
        assert cells[2] == f"`{instrument.unit}`"
        assert cells[3] == (", ".join(f"`{label}`" for label in instrument.labels) or "—")
