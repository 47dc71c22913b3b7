"""The regional aggregator's configuration file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jurisfed.auth.pki import TlsFiles
from jurisfed.auth.tokens import TokenKeyFile
from jurisfed.config import setting
from jurisfed.telemetry.settings import TelemetryConfig


@dataclass(frozen=True)
class RegionalConfig:
    jurisdiction: str = setting("jurisdiction this regional serves; must match its certificate")
    global_address: str = setting("host:port of the global aggregator")
    state_dir: Path = setting(
        "directory for the silo registry and round state (state.sqlite), personalized models and "
        "updates (blobs/), the audit log and its key, and the error-feedback residual of its top-k "
        "compressed aggregates"
    )
    tls: TlsFiles = setting("mutual TLS files: ca_cert, cert (URI SAN names jurisdiction/tier/node), key")
    policy: Path = setting(
        "this jurisdiction's signed residency policy (YAML); the regional refuses to start without it"
    )
    policy_keys: Path = setting("approver public keys trusted to sign the policy: a .pem file or a directory")
    token: TokenKeyFile = setting(
        "this regional's token key, for its calls to the global aggregator: key, kid"
    )
    token_keys: Path = setting(
        "key set of the public token keys trusted to call this aggregator: a directory with one "
        "folder per role (silo/, regional/, operator/, auditor/) of KID.pem files, or a JWKS file; "
        "re-read on change"
    )
    crl: Path = setting(
        "the federation CA's certificate revocation list (PEM); re-read on change, so a revoked "
        "certificate is refused without a restart"
    )
    listen: str = setting("host:port to serve silos on (port 0 picks a free port)", "127.0.0.1:50061")
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
    witness_interval_s: float = setting(
        "seconds between two checkpoint exchanges with the global (also one at shutdown)", 30.0
    )
    ready_file: Path | None = setting("file to write the bound host:port to once serving", None)
    min_silos: int = setting(
        "quorum: fewest silo updates a round needs before it is forwarded; the regional joins the "
        "federation once this many silos have registered",
        2,
    )
    forward_margin_s: float = setting(
        "seconds before the global deadline at which the local round closes", 10.0
    )
    exit_when_finished: bool = setting(
        "when the global says the federation finished (its round plan ended, none runs): true: stop "
        "following the global and answer this regional's silos that the federation finished (silos "
        "with exit_when_finished exit; the regional serves until stopped), for runs meant to end, such "
        "as the demo; false: stay in the federation, idle, and run the rounds of the next plan an "
        "operator starts",
        False,
    )
    max_concurrent_uploads: int = setting("silo uploads staged at once; more wait, then are refused", 4)
    upstream_unreachable_s: float = setting(
        "seconds the global aggregator may stay unreachable (calls failing, no answer in between) "
        "before this regional's health goes NOT_SERVING; SERVING again at the global's next answer",
        60.0,
    )
    max_message_bytes: int = setting("largest single gRPC message accepted", 2 * 1024 * 1024)
    contract_key: Path | None = setting(
        "the global aggregator's public contract key (its state_dir's contract.key.pub): only round "
        "contracts it signed are acted on; empty: the key the global presents when this regional "
        "registers over mutual TLS",
        None,
    )
    validation_set: Path | None = setting(
        "held-out examples of this jurisdiction the regional may hold (.npz: features, labels); with "
        "them, each round's personalized model is the mix of the jurisdiction's own model and the "
        "global one most accurate on them (never worse there than the global model); empty: its own "
        "model as it is",
        None,
    )
    personalization_min_gain: float = setting(
        "validation accuracy a mix must gain over the global model alone to be served instead of it "
        "(0.02: two points), so a small validation set's noise does not move the choice",
        0.0,
    )
    quantization_seed: int | None = setting(
        "seed of the int8 stochastic rounding of forwarded aggregates; empty draws a fresh one "
        "from the OS (set it only to make a run reproducible)",
        None,
    )

    def __post_init__(self) -> None:
        if self.min_silos < 1:
            raise ValueError("min_silos must be at least 1")
        if self.max_concurrent_uploads < 1:
            raise ValueError("max_concurrent_uploads must be at least 1")
        if self.forward_margin_s < 0:
            raise ValueError("forward_margin_s must not be negative")
        if self.upstream_unreachable_s <= 0:
            raise ValueError("upstream_unreachable_s must be positive")
