"""The silo trainer's configuration file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jurisfed.auth.pki import TlsFiles
from jurisfed.auth.tokens import TokenKeyFile
from jurisfed.config import setting
from jurisfed.telemetry.settings import TelemetryConfig


@dataclass(frozen=True)
class SiloConfig:
    jurisdiction: str = setting("jurisdiction this silo's data belongs to; must match its certificate")
    regional_address: str = setting("host:port of this jurisdiction's regional aggregator")
    data: Path = setting("local training data: .npz (arrays features, labels) or .csv (a label column)")
    tls: TlsFiles = setting("mutual TLS files: ca_cert, cert (URI SAN names jurisdiction/tier/node), key")
    policy: Path = setting(
        "this jurisdiction's signed residency policy (YAML): the silo sends updates only where it allows"
    )
    policy_keys: Path = setting("approver public keys trusted to sign the policy: a .pem file or a directory")
    state_dir: Path = setting(
        "directory for this silo's audit log of policy decisions and the error-feedback residual of "
        "its top-k compressed updates"
    )
    token: TokenKeyFile = setting("this silo's token key, for its calls to the regional: key, kid")
    audit_key: Path | None = setting(
        "Ed25519 key that signs this silo's audit checkpoints; empty: made in state_dir on first start",
        None,
    )
    telemetry: TelemetryConfig = setting(
        "traces (OTLP) and metrics (Prometheus endpoint); see docs/observability.md", TelemetryConfig()
    )
    contract_key: Path | None = setting(
        "the global's round-contract public key (its contract.key.pub): the silo then trains only "
        "for rounds whose contract the global signed and that match what the regional announced; "
        "empty: the regional's check alone",
        None,
    )
    seed: int = setting("seed of local training (shuffling, dropout)", 0)
    exit_when_finished: bool = setting(
        "when the regional says the federation finished: true: exit (status 0), for runs meant to "
        "end, such as the demo; false: stay up, idle, and take part in the rounds of the next plan",
        False,
    )
    connect_timeout_s: float = setting("how long to wait for the regional to be reachable at start", 120.0)
