"""The `telemetry:` section of a tier's configuration file: defaults, overrides, refusals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from jurisfed.auth.identity import Identity, Tier
from jurisfed.config import load_config, setting
from jurisfed.errors import ConfigError
from jurisfed.policy.model import MetadataField
from jurisfed.telemetry import Telemetry, TelemetryConfig


@dataclass(frozen=True)
class NodeConfig:
    """A tier's configuration as the tiers nest it."""

    listen: str = setting("where the tier serves", "127.0.0.1:0")
    telemetry: TelemetryConfig = setting("traces and metrics", TelemetryConfig())


def _load(tmp_path: Path, text: str, **environ: str) -> NodeConfig:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return load_config(NodeConfig, path, env_prefix="node", environ=environ)


def test_without_a_telemetry_section_metrics_are_local_and_every_field_is_stripped(tmp_path: Path) -> None:
    config = _load(tmp_path, "listen: 127.0.0.1:50061\n").telemetry
    assert config.metrics_listen == "127.0.0.1:0"
    assert config.otlp_endpoint == ""
    assert not config.otlp_insecure
    assert config.strip_fields == frozenset(MetadataField)


def test_keys_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "telemetry:\n  metrics_listen: '[::]:9464'\n  strip_metadata: [silo_ids, ip_addresses]\n"
        "  spans_file: spans.jsonl\n",
        JURISFED_NODE_TELEMETRY_OTLP_ENDPOINT="collector.eu.internal:4317",
    ).telemetry
    assert config.metrics_listen == "[::]:9464"
    assert config.strip_fields == {MetadataField.SILO_IDS, MetadataField.IP_ADDRESSES}
    assert config.spans_file == tmp_path / "spans.jsonl"
    assert config.otlp_endpoint == "collector.eu.internal:4317"


def test_an_empty_environment_value_strips_nothing(tmp_path: Path) -> None:
    config = _load(tmp_path, "{}\n", JURISFED_NODE_TELEMETRY_STRIP_METADATA="").telemetry
    assert config.strip_fields == frozenset()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("telemetry:\n  strip_metadata: [silo_ids, silo_names]\n", "silo_names"),
        ("telemetry:\n  metrics_listen: '9464'\n", "not host:port"),
        ("telemetry:\n  metrics_listen: 'localhost:99999'\n", "not host:port"),
        ("telemetry:\n  metrics_export_interval_s: 0\n", "metrics_export_interval_s"),
        ("telemetry:\n  otlp_insecure: true\n  otlp_ca_cert: ca.crt\n", "contradict"),
        ("telemetry:\n  otlp_endpoit: collector:4317\n", "otlp_endpoit"),
    ],
)
def test_mistakes_are_refused_at_start_up_naming_the_key(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        _load(tmp_path, text)


def test_an_unreadable_collector_ca_is_a_config_error(tmp_path: Path) -> None:
    config = TelemetryConfig(
        metrics_listen="", otlp_endpoint="127.0.0.1:4317", otlp_ca_cert=tmp_path / "missing.crt"
    )
    with pytest.raises(ConfigError, match=r"missing\.crt"):
        Telemetry.start(config, Identity("EU", Tier.REGIONAL, "eu-1"))
