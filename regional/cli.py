"""`python -m regional --config regional.yaml`: run one jurisdiction's regional aggregator."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from jurisfed.auth.identity import Tier
from jurisfed.auth.pki import certificate_identity
from jurisfed.config import describe, load_config
from jurisfed.errors import ConfigError
from jurisfed.process import setup_logging, split_address, stop_on_signals, write_ready_file
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import serve
from jurisfed.store.checkpoints import CheckpointStore
from regional.aggregator import RegionalAggregator
from regional.config import RegionalConfig
from regional.servicer import regional_service
from regional.upstream import Upstream

log = logging.getLogger("jurisfed.regional")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m regional",
        description="Run a regional aggregator: serve this jurisdiction's silos over mTLS, aggregate "
        "their updates as they stream in, keep the jurisdiction's personalized model and forward "
        "only the int8-compressed aggregate to the global aggregator.",
        epilog="Configuration keys (YAML file, each overridable by its environment variable):\n"
        + describe(RegionalConfig, "regional"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_config(RegionalConfig, args.config, env_prefix="regional", environ=os.environ)
        run(config, stop_on_signals())
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return 2
    return 0


def run(config: RegionalConfig, stop: threading.Event) -> None:
    identity = certificate_identity(config.tls.cert)
    if identity.tier is not Tier.REGIONAL or identity.jurisdiction != config.jurisdiction:
        raise ConfigError(
            f"certificate {config.tls.cert} names {identity}; a regional of {config.jurisdiction} needs "
            f"jurisfed://{config.jurisdiction}/regional/<node>"
        )
    aggregator = RegionalAggregator(
        identity,
        CheckpointStore(config.state_dir / "personalized"),
        min_silos=config.min_silos,
        max_concurrent_uploads=config.max_concurrent_uploads,
    )
    host, port = split_address(config.listen)
    with serve(
        [regional_service(aggregator)],
        config.tls,
        host=host,
        port=port,
        max_message_bytes=config.max_message_bytes,
    ) as server:
        channel = open_channel(config.global_address, config.tls, max_message_bytes=config.max_message_bytes)
        upstream = Upstream(
            aggregator,
            channel,
            forward_margin_s=config.forward_margin_s,
            stop=stop,
            quantization_seed=config.quantization_seed,
        )
        follower = threading.Thread(target=upstream.run, name="upstream", daemon=True)
        follower.start()
        server.set_serving(True)
        write_ready_file(config.ready_file, server.address)
        log.info("serving", extra={"address": server.address, "identity": str(identity)})
        stop.wait()
        aggregator.shutdown()
        server.stop(grace_s=5.0)
        channel.close()  # cancels the upstream's long poll
        follower.join(timeout=5.0)
    log.info("stopped")
