"""`python -m regional --config regional.yaml`: run one jurisdiction's regional aggregator."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from jurisfed.audit.events import AuditEvent, Detail, EventKind
from jurisfed.audit.keys import load_public_keys
from jurisfed.audit.log import AuditLog
from jurisfed.audit.tier import open_tier_log
from jurisfed.audit.witness_link import open_book
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import own_identity
from jurisfed.auth.signatures import ContentSigner
from jurisfed.auth.tokens import Role
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.policy.guard import PolicyGuard, load_tier_policy
from jurisfed.process import split_address, tier_main, write_ready_file
from jurisfed.rpc.channel import open_authenticated_channel
from jurisfed.rpc.jurisdiction_interceptor import JurisdictionInterceptor
from jurisfed.rpc.peer_limits import PeerLimitInterceptor, PeerLimits
from jurisfed.rpc.reachability import Change, Reachability
from jurisfed.rpc.revocation_interceptor import revocation_interceptor
from jurisfed.rpc.server import RunningServer, serve
from jurisfed.rpc.token_interceptor import token_interceptor
from jurisfed.telemetry import Telemetry, required_by_policy
from regional.aggregator import RegionalAggregator
from regional.config import RegionalConfig
from regional.personalization import Personalizer
from regional.servicer import METHOD_ROLES, SERVICE, regional_service
from regional.upstream import RESIDUAL_FILE, Upstream
from regional.witness import WitnessLoop

log = logging.getLogger("jurisfed.regional")


def main(argv: list[str] | None = None) -> int:
    return tier_main(
        argv,
        prog="python -m regional",
        description="Run a regional aggregator: serve this jurisdiction's silos over mTLS, aggregate "
        "their updates as they stream in, keep the jurisdiction's personalized model and forward "
        "only the compressed aggregate to the global aggregator, as far as the jurisdiction's signed "
        "residency policy allows; an unsigned or altered policy stops it at start-up (exit 2). Each "
        "round's contract must be signed by the global's contract key; silos are selected by its "
        "eligibility rules, and told why when they are not. State survives a restart: a killed "
        "regional resumes the round it was in.",
        config_type=RegionalConfig,
        env_prefix="regional",
        run=run,
    )


def run(config: RegionalConfig, stop: threading.Event) -> None:
    identity = own_identity(config.tls.cert, Tier.REGIONAL, config.jurisdiction)
    policy = load_tier_policy(config.policy, config.policy_keys, jurisdiction=config.jurisdiction)
    audit = open_tier_log(config.state_dir, identity, config.audit_key)
    telemetry = Telemetry.start(
        config.telemetry, identity, policy_strip=required_by_policy(policy, Tier.REGIONAL)
    )
    contract_key = load_public_keys(config.contract_key)[0] if config.contract_key is not None else None
    personalizer = (
        Personalizer.load(config.validation_set, min_gain=config.personalization_min_gain)
        if config.validation_set is not None
        else None
    )
    aggregator = RegionalAggregator(
        identity,
        config.state_dir,
        min_silos=config.min_silos,
        max_concurrent_uploads=config.max_concurrent_uploads,
        audit=audit,
        guard=PolicyGuard(policy, identity, audit),
        instruments=telemetry.instrumentation,
        personalizer=personalizer,
    )
    aggregator.resume()  # before serving, so a silo's retry finds its round open again
    witnesses = open_book(config.state_dir, identity, config.witness_peers, audit)
    log.info("residency policy loaded", extra={"policy": policy.label, "sha256": policy.sha256})
    host, port = split_address(config.listen)
    interceptors = [
        telemetry.server_interceptor(),  # first, so refusals are traced too
        revocation_interceptor(config.tls.ca_cert, config.crl),
        JurisdictionInterceptor(identity.jurisdiction),
        PeerLimitInterceptor(PeerLimits()),
        token_interceptor(identity, config.token_keys, METHOD_ROLES, SERVICE),
    ]
    tokens = config.token.minter(identity, Role.REGIONAL)

    def dial_global() -> grpc.Channel:
        channel, _ = open_authenticated_channel(
            config.global_address,
            config.tls,
            tokens,
            expect=Tier.GLOBAL,
            max_message_bytes=config.max_message_bytes,
        )
        return grpc.intercept_channel(channel, telemetry.client_interceptor())

    with serve(
        [regional_service(aggregator)],
        config.tls,
        host=host,
        port=port,
        max_message_bytes=config.max_message_bytes,
        interceptors=interceptors,
        health_address=split_address(config.health_listen) if config.health_listen else None,
    ) as server:
        reachability = Reachability(
            "global aggregator", config.upstream_unreachable_s, _health_follows(server, audit, identity)
        )
        upstream = Upstream(
            aggregator,
            dial_global,
            signer=ContentSigner.from_tls_files(config.tls),
            forward_margin_s=config.forward_margin_s,
            stop=stop,
            residual=ResidualFile(config.state_dir / RESIDUAL_FILE),
            exit_when_finished=config.exit_when_finished,
            quantization_seed=config.quantization_seed,
            contract_key=contract_key,
            link=reachability,
        )
        follower = threading.Thread(target=upstream.run, name="upstream", daemon=True)
        follower.start()
        witness = WitnessLoop(audit, witnesses, dial_global, stop, interval_s=config.witness_interval_s)
        witnessing = threading.Thread(target=witness.run, name="witness", daemon=True)
        if config.witness_peers:
            witnessing.start()
        server.set_serving(True)
        write_ready_file(config.ready_file, server.address)
        log.info("serving", extra={"address": server.address, "identity": str(identity)})
        stop.wait()
        aggregator.shutdown()
        server.stop(grace_s=5.0)
        upstream.close()  # cancels the upstream's long poll
        follower.join(timeout=5.0)
        if config.witness_peers:
            witnessing.join(timeout=10.0)
    telemetry.shutdown()
    witnesses.close()
    audit.close()
    log.info("stopped")


def _health_follows(server: RunningServer, audit: AuditLog, identity: Identity) -> Callable[[Change], None]:
    """Health NOT_SERVING while the global stays unreachable past the threshold; each change audited."""

    def follow(change: Change) -> None:
        server.set_serving(change.reachable, condition="upstream")
        reason = (
            f"the {change.peer} answers again after {change.failing_s:.0f} s"
            if change.reachable
            else f"the {change.peer} has been unreachable for {change.failing_s:.0f} s"
        )
        log.warning(
            "health follows the upstream",
            extra={"serving": change.reachable, "reason": reason},
        )
        audit.record(
            AuditEvent(
                EventKind.HEALTH_CHANGE,
                actor=identity,
                jurisdiction=identity.jurisdiction,
                details={"serving": change.reachable, Detail.REASON: reason},
            )
        )

    return follow
