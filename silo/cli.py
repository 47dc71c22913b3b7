"""`python -m silo --config silo.yaml`: train beside the data and report to the regional."""

from __future__ import annotations

import logging
import threading

import grpc

from jurisfed.audit.keys import load_public_keys
from jurisfed.audit.tier import open_tier_log
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import own_identity
from jurisfed.auth.server_identity import wait_for_server_identity
from jurisfed.auth.signatures import ContentSigner
from jurisfed.auth.tokens import Role
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.errors import NotAllowed
from jurisfed.policy.guard import PolicyGuard, load_tier_policy
from jurisfed.policy.model import Artifact, Endpoint, Flow
from jurisfed.process import tier_main
from jurisfed.rpc.channel import open_channel, wait_until_serving
from jurisfed.telemetry import Telemetry, required_by_policy
from silo.config import SiloConfig

log = logging.getLogger("jurisfed.silo")

# In state_dir: what top-k codecs have not yet sent of this silo's updates.
RESIDUAL_FILE = "residual-silo_to_regional.bin"


def main(argv: list[str] | None = None) -> int:
    return tier_main(
        argv,
        prog="python -m silo",
        description="Run a silo trainer: read local data, train the round's model with TensorFlow for "
        "the contracted epochs, and stream only the weight delta to this jurisdiction's regional "
        "aggregator over mTLS, and only if the jurisdiction's signed residency policy allows sending "
        "to that regional (exit 4 if it does not). Raw records never leave this process.",
        config_type=SiloConfig,
        env_prefix="silo",
        run=run,
    )


def run(config: SiloConfig, stop: threading.Event) -> None:
    # TensorFlow loads with these, so `--help` and config errors answer at once.
    from silo.client import SiloClient
    from silo.data import load_dataset

    identity = own_identity(config.tls.cert, Tier.SILO, config.jurisdiction)
    policy = load_tier_policy(config.policy, config.policy_keys, jurisdiction=config.jurisdiction)
    dataset = load_dataset(config.data)
    log.info("data loaded", extra={"examples": len(dataset.labels), "identity": str(identity)})
    audit = open_tier_log(config.state_dir, identity, config.audit_key)
    strip = required_by_policy(policy, Tier.SILO)
    telemetry = Telemetry.start(config.telemetry, identity, policy_strip=strip)
    try:
        # Whom the address reaches, from its certificate, and whether policy allows it: before
        # any call, so a silo pointed at the wrong regional sends it nothing at all.
        regional = wait_for_server_identity(
            config.regional_address, config.tls, timeout_s=config.connect_timeout_s
        )
        check_regional(PolicyGuard(policy, identity, audit), identity, regional)
        tokens = config.token.minter(identity, Role.SILO)
        with open_channel(
            config.regional_address, config.tls, tokens=tokens, audience=regional.uri
        ) as channel:
            wait_until_serving(channel, timeout_s=config.connect_timeout_s)
            signer = ContentSigner.from_tls_files(config.tls)
            traced = grpc.intercept_channel(channel, telemetry.client_interceptor())
            contract_key = load_public_keys(config.contract_key)[0] if config.contract_key else None
            client = SiloClient(
                traced,
                dataset,
                seed=config.seed,
                stop=stop,
                signer=signer,
                residual=ResidualFile(config.state_dir / RESIDUAL_FILE),
                exit_when_finished=config.exit_when_finished,
                tracer=telemetry.tracer,
                contract_key=contract_key,
            )
            client.run()
    finally:
        telemetry.shutdown()
        audit.close()
    log.info("stopped")


def check_regional(guard: PolicyGuard, identity: Identity, regional: Identity) -> None:
    """Refuse (NotAllowed, exit 4) unless policy lets this silo report to and learn from `regional`.

    The regional's identity comes from its verified certificate; its hosting location is the
    one the policy names for its own jurisdiction's regional, and unknown for any other.
    """
    if regional.tier is not Tier.REGIONAL:
        raise NotAllowed(f"{regional} is not a regional aggregator; a silo reports only to one")
    own_regional = regional.jurisdiction == guard.policy.jurisdiction
    there = Endpoint.of(regional, guard.location if own_regional else None)
    here = Endpoint.of(identity)
    for flow in (
        Flow(Artifact.TELEMETRY, here, there),
        Flow(Artifact.MODEL_UPDATE, here, there),
        Flow(Artifact.MODEL_CHECKPOINT, there, here),
    ):
        guard.require(flow, subject=regional)
    log.info("regional allowed by policy", extra={"regional": str(regional), "policy": guard.policy.label})
