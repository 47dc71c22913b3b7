"""The `telemetry:` section of every tier's configuration file.

Every key has a default, so a tier nests it as
``telemetry: TelemetryConfig = setting("traces and metrics", TelemetryConfig())`` and a config
file without a `telemetry:` mapping gets a local Prometheus endpoint and nothing exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jurisfed.config import setting
from jurisfed.policy.model import MetadataField

ALL_METADATA_FIELDS: tuple[str, ...] = tuple(field.value for field in MetadataField)


@dataclass(frozen=True)
class TelemetryConfig:
    metrics_listen: str = setting(
        "host:port of the Prometheus scrape endpoint (GET /metrics); port 0 picks a free port, "
        "which the process logs; empty turns the endpoint off",
        "127.0.0.1:0",
    )
    otlp_endpoint: str = setting(
        "host:port of an OpenTelemetry collector (OTLP over gRPC) that receives traces and metrics; "
        "empty: nothing is exported over OTLP",
        "",
    )
    otlp_insecure: bool = setting(
        "send OTLP in plaintext; only for a collector on this host or on a network you trust", False
    )
    otlp_ca_cert: Path | None = setting(
        "CA certificate the collector's TLS certificate must chain to; empty: the system's trust store",
        None,
    )
    metrics_export_interval_s: float = setting("seconds between two OTLP metric exports", 15.0)
    spans_file: Path | None = setting(
        "append every finished span to this file, one JSON object per line (one file per process; "
        "for tests and debugging); empty: no file",
        None,
    )
    strip_metadata: tuple[str, ...] = setting(
        "identifying details removed from every span this process exports (OTLP and spans_file), "
        "named as in a policy's strip_metadata: silo_ids, host_names, ip_addresses, "
        "per_silo_example_counts, per_silo_metrics. The default removes all of them; narrow it only "
        "for a collector inside this process's jurisdiction. What the residency policy requires for "
        "telemetry leaving the jurisdiction is removed whatever this says",
        ALL_METADATA_FIELDS,
    )

    def __post_init__(self) -> None:
        if self.metrics_listen:
            split_host_port(self.metrics_listen)
        if self.metrics_export_interval_s <= 0:
            raise ValueError("metrics_export_interval_s must be positive")
        if self.otlp_insecure and self.otlp_ca_cert is not None:
            raise ValueError("otlp_insecure and otlp_ca_cert contradict each other: choose one")
        metadata_fields(self.strip_metadata)

    @property
    def strip_fields(self) -> frozenset[MetadataField]:
        return metadata_fields(self.strip_metadata)


def metadata_fields(names: tuple[str, ...]) -> frozenset[MetadataField]:
    """Policy metadata fields named as in a policy file; blank names are ignored, unknown ones refused."""
    known = {field.value: field for field in MetadataField}
    unknown = sorted(name for name in names if name and name not in known)
    if unknown:
        raise ValueError(f"strip_metadata names unknown field(s) {unknown}; known: {sorted(known)}")
    return frozenset(known[name] for name in names if name)


def split_host_port(address: str) -> tuple[str, int]:
    """("127.0.0.1", 9464) from "127.0.0.1:9464"; IPv6 hosts in brackets: "[::1]:9464"."""
    host, separator, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:9464, [::]:9464)")
    return host, int(port_text)
