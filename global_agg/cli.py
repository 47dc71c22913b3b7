"""`python -m global_agg --config global.yaml`: run the global aggregator."""

from __future__ import annotations

import logging
import os
import threading

from global_agg.acceptance import Acceptance
from global_agg.config import GlobalConfig
from global_agg.coordinator import GlobalCoordinator, Schedule
from global_agg.plans import ContractIssuer, plan_from_settings
from global_agg.servicer import METHOD_ROLES, SERVICE, global_service
from jurisfed.audit.tier import open_tier_log
from jurisfed.audit.witness_link import METHOD_ROLES as WITNESS_ROLES
from jurisfed.audit.witness_link import SERVICE as WITNESS_SERVICE
from jurisfed.audit.witness_link import open_book, witness_service
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Tier
from jurisfed.auth.pki import own_identity
from jurisfed.errors import ConfigError
from jurisfed.modeling.mlp import Mlp
from jurisfed.policy.guard import PolicyGuard, load_tier_policy
from jurisfed.policy.model import Policy
from jurisfed.process import split_address, tier_main, write_ready_file
from jurisfed.round_plan import RoundPlan, load_plan
from jurisfed.rpc.peer_limits import PeerLimitInterceptor, PeerLimits
from jurisfed.rpc.revocation_interceptor import revocation_interceptor
from jurisfed.rpc.server import serve
from jurisfed.rpc.token_interceptor import token_interceptor
from jurisfed.telemetry import Telemetry, required_by_policy

log = logging.getLogger("jurisfed.global")


def main(argv: list[str] | None = None) -> int:
    return tier_main(
        argv,
        prog="python -m global_agg",
        description="Run the global aggregator: run round plans, announcing each round to the regional "
        "aggregators with a signed contract, combine their compressed aggregates weighted by example "
        "count, check the candidate against the acceptance gates and commit it as a versioned "
        "checkpoint. State survives a restart: a killed global resumes the round it was in. Every "
        "aggregate must be allowed by the exporting jurisdiction's signed residency policy and by "
        "the global's own; an unsigned or altered policy stops it at start-up (exit 2).",
        config_type=GlobalConfig,
        env_prefix="global",
        run=run,
    )


def _member_policies(config: GlobalConfig) -> dict[str, Policy]:
    members: dict[str, Policy] = {}
    for path in config.member_policies:
        member = load_tier_policy(path, config.policy_keys)
        if member.jurisdiction in members or member.jurisdiction == GLOBAL_JURISDICTION:
            raise ConfigError(f"member_policies: {path} is a second policy for {member.jurisdiction}")
        members[member.jurisdiction] = member
    if not members:
        raise ConfigError("member_policies is empty: no jurisdiction could take part")
    return members


def _initial_plan(config: GlobalConfig, members: tuple[str, ...]) -> RoundPlan | None:
    """The plan file, or the plan the configuration keys describe (None with rounds: 0)."""
    if config.plan is not None:
        return load_plan(config.plan, environ=os.environ)
    if config.rounds == 0:
        return None
    try:
        return plan_from_settings(
            rounds=config.rounds,
            round_deadline_s=config.round_deadline_s,
            min_jurisdictions=config.min_jurisdictions,
            training=config.training,
            compression=config.upstream_compression,
            jurisdictions=members,
        )
    except ValueError as error:
        raise ConfigError(f"the plan of this configuration is invalid: {error}") from None


def run(config: GlobalConfig, stop: threading.Event) -> None:
    identity = own_identity(config.tls.cert, Tier.GLOBAL, GLOBAL_JURISDICTION)
    policy = load_tier_policy(config.policy, config.policy_keys, jurisdiction=GLOBAL_JURISDICTION)
    if policy.hosting_location is None:
        raise ConfigError(f"policy {config.policy} must name the hosting_location of the global aggregator")
    members = _member_policies(config)
    try:
        architecture = Mlp.parse(config.architecture)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    initial_plan = _initial_plan(config, tuple(members))
    acceptance = Acceptance.load(architecture, config.probe_set)
    issuer = ContractIssuer.open(config.state_dir, config.contract_key)
    audit = open_tier_log(config.state_dir, identity, config.audit_key)
    telemetry = Telemetry.start(
        config.telemetry, identity, policy_strip=required_by_policy(policy, Tier.GLOBAL)
    )
    coordinator = GlobalCoordinator(
        identity,
        architecture.spec(),
        architecture.initial_weights(config.seed),
        config.state_dir,
        Schedule(config.expected_jurisdictions, config.start_timeout_s),
        issuer=issuer,
        acceptance=acceptance,
        audit=audit,
        guard=PolicyGuard(policy, identity, audit),
        members={j: PolicyGuard(p, identity, audit) for j, p in members.items()},
        initial_plan=initial_plan,
        instruments=telemetry.instrumentation,
    )
    log.info(
        "residency policies loaded",
        extra={"policy": policy.label, "location": policy.hosting_location, "members": sorted(members)},
    )
    log.info("round contracts are signed", extra={"contract_key_id": issuer.key_id})
    host, port = split_address(config.listen)
    witnesses = open_book(config.state_dir, identity, config.witness_peers, audit)
    roles = METHOD_ROLES.including(WITNESS_ROLES)
    interceptors = [
        telemetry.server_interceptor(),  # first, so refusals are traced too
        revocation_interceptor(config.tls.ca_cert, config.crl),
        PeerLimitInterceptor(PeerLimits()),
        token_interceptor(identity, config.token_keys, roles, SERVICE, WITNESS_SERVICE),
    ]
    with serve(
        [global_service(coordinator), witness_service(audit, witnesses)],
        config.tls,
        host=host,
        port=port,
        max_message_bytes=config.max_message_bytes,
        interceptors=interceptors,
        health_address=split_address(config.health_listen) if config.health_listen else None,
    ) as server:
        rounds = threading.Thread(target=coordinator.run, args=(stop,), name="rounds", daemon=True)
        rounds.start()
        server.set_serving(True)
        write_ready_file(config.ready_file, server.address)
        log.info("serving", extra={"address": server.address, "identity": str(identity)})
        stop.wait()
        coordinator.shutdown()
        server.stop(grace_s=5.0)
        rounds.join(timeout=5.0)
    telemetry.shutdown()
    witnesses.close()
    audit.close()
    log.info("stopped")
