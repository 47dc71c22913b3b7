"""The global aggregator's configuration file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jurisfed.auth.pki import TlsFiles
from jurisfed.config import setting
from jurisfed.rounds import UPSTREAM_COMPRESSIONS, TrainingConfig
from jurisfed.telemetry.settings import TelemetryConfig


@dataclass(frozen=True)
class GlobalConfig:
    state_dir: Path = setting(
        "directory for the round state (state.sqlite), checkpoints, contracts and aggregates (blobs/), "
        "the audit log and the keys made on first start"
    )
    tls: TlsFiles = setting("mutual TLS files: ca_cert, cert (URI SAN names jurisdiction/tier/node), key")
    policy: Path = setting(
        "the global aggregator's signed residency policy (YAML); its hosting_location is where this "
        "aggregator runs"
    )
    member_policies: tuple[Path, ...] = setting(
        "the signed residency policy of every member jurisdiction; each must also allow what its "
        "regional sends, and only these jurisdictions may register"
    )
    policy_keys: Path = setting("approver public keys trusted to sign policies: a .pem file or a directory")
    token_keys: Path = setting(
        "key set of the public token keys trusted to call this aggregator: a directory with one "
        "folder per role (silo/, regional/, operator/, auditor/) of KID.pem files, or a JWKS file; "
        "re-read on change"
    )
    crl: Path = setting(
        "the federation CA's certificate revocation list (PEM); re-read on change, so a revoked "
        "certificate is refused without a restart"
    )
    listen: str = setting(
        "host:port to serve regionals and operators on (port 0 picks a free port)", "127.0.0.1:50051"
    )
    health_listen: str = setting(
        "host:port of a plaintext listener that serves only the gRPC health protocol (SERVING or "
        "NOT_SERVING, and `liveness`), for probes that cannot present a client certificate, such as "
        "Kubernetes' native grpc probes; no other service, no data (docs/security.md); empty: none",
        "",
    )
    audit_key: Path | None = setting(
        "Ed25519 key that signs this tier's audit checkpoints; empty: made in state_dir on first start",
        None,
    )
    telemetry: TelemetryConfig = setting(
        "traces (OTLP) and metrics (Prometheus endpoint); see docs/observability.md", TelemetryConfig()
    )
    witness_peers: tuple[str, ...] = setting(
        "aggregators whose audit logs this node witnesses, and which witness its own: "
        "IDENTITY=PUBLIC_KEY_FILE entries (the peer's audit key .pub), e.g. "
        "jurisfed://GLOBAL/global/main=/etc/jurisfed/witness/global.pub; empty: no witnessing",
        (),
    )
    ready_file: Path | None = setting("file to write the bound host:port to once serving", None)
    architecture: str = setting("model architecture, e.g. mlp-64-256-128-10", "mlp-64-256-128-10")
    seed: int = setting("seed of the initial model weights", 0)
    plan: Path | None = setting(
        "round plan file (deploy/plans/demo.yaml is one) run on the first start of a fresh state_dir; "
        "empty: the plan that rounds, round_deadline_s, min_jurisdictions, training and "
        "upstream_compression describe. Later plans: `jurisfed round start --plan`",
        None,
    )
    probe_set: Path | None = setting(
        "examples the global may hold to evaluate candidate models on before a commit: an .npz with "
        "arrays features and labels; empty: only the gates on the weights themselves (finite values, "
        "update norm) can be used",
        None,
    )
    contract_key: Path | None = setting(
        "Ed25519 key that signs round contracts; empty: made in state_dir on first start "
        "(contract.key; give contract.key.pub to the regionals as their contract_key)",
        None,
    )
    rounds: int = setting(
        "without a plan file: rounds to run before the federation finishes (0: none until "
        "`jurisfed round start`)",
        10,
    )
    round_deadline_s: float = setting(
        "without a plan file: seconds a round stays open for aggregates (regionals and silos get 95% of it)",
        120.0,
    )
    expected_jurisdictions: int = setting("jurisdictions to wait for before the first round", 1)
    start_timeout_s: float = setting(
        "longest wait for the expected jurisdictions before starting anyway", 300.0
    )
    min_jurisdictions: int = setting(
        "without a plan file: quorum, the fewest jurisdiction aggregates a round needs to commit", 1
    )
    upstream_compression: str = setting(
        "without a plan file: how regionals encode their aggregates: int8 (4x fewer bytes) or none",
        "int8",
    )
    training: TrainingConfig = setting(
        "without a plan file: local training settings handed to every silo", TrainingConfig()
    )
    max_message_bytes: int = setting("largest single gRPC message accepted", 2 * 1024 * 1024)

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError("rounds must not be negative")
        if self.round_deadline_s <= 0:
            raise ValueError("round_deadline_s must be positive")
        if self.upstream_compression not in UPSTREAM_COMPRESSIONS:
            raise ValueError(f"upstream_compression must be one of {', '.join(UPSTREAM_COMPRESSIONS)}")
        if self.min_jurisdictions < 1 or self.expected_jurisdictions < 1:
            raise ValueError("min_jurisdictions and expected_jurisdictions must be at least 1")
