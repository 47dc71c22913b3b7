"""`python -m global_agg --config global.yaml`: run the global aggregator."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from global_agg.config import GlobalConfig
from global_agg.coordinator import GlobalCoordinator, RoundPlan
from global_agg.servicer import global_service
from jurisfed.auth.identity import Tier
from jurisfed.auth.pki import certificate_identity
from jurisfed.config import describe, load_config
from jurisfed.errors import ConfigError
from jurisfed.modeling.mlp import Mlp
from jurisfed.process import setup_logging, split_address, stop_on_signals, write_ready_file
from jurisfed.rpc.server import serve
from jurisfed.store.checkpoints import CheckpointStore

log = logging.getLogger("jurisfed.global")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m global_agg",
        description="Run the global aggregator: announce numbered rounds to the regional aggregators, "
        "combine their compressed aggregates weighted by example count and write each committed "
        "model as a versioned checkpoint.",
        epilog="Configuration keys (YAML file, each overridable by its environment variable):\n"
        + describe(GlobalConfig, "global"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_config(GlobalConfig, args.config, env_prefix="global", environ=os.environ)
        run(config, stop_on_signals())
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return 2
    return 0


def run(config: GlobalConfig, stop: threading.Event) -> None:
    identity = certificate_identity(config.tls.cert)
    if identity.tier is not Tier.GLOBAL:
        raise ConfigError(f"certificate {config.tls.cert} names {identity}, not a global aggregator")
    try:
        architecture = Mlp.parse(config.architecture)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    plan = RoundPlan(
        rounds=config.rounds,
        round_deadline_s=config.round_deadline_s,
        expected_jurisdictions=config.expected_jurisdictions,
        start_timeout_s=config.start_timeout_s,
        min_jurisdictions=config.min_jurisdictions,
        training=config.training,
    )
    coordinator = GlobalCoordinator(
        architecture.spec(),
        architecture.initial_weights(config.seed),
        CheckpointStore(config.state_dir / "checkpoints"),
        plan,
    )
    host, port = split_address(config.listen)
    with serve(
        [global_service(coordinator)],
        config.tls,
        host=host,
        port=port,
        max_message_bytes=config.max_message_bytes,
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
    log.info("stopped")
