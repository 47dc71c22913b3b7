"""`python -m silo --config silo.yaml`: train beside the data and report to the regional."""

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
from jurisfed.process import setup_logging, stop_on_signals
from jurisfed.rpc.channel import open_channel, wait_until_serving
from silo.config import SiloConfig

log = logging.getLogger("jurisfed.silo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m silo",
        description="Run a silo trainer: read local data, train the round's model with TensorFlow for "
        "the contracted epochs, and stream only the weight delta to this jurisdiction's regional "
        "aggregator over mTLS. Raw records never leave this process.",
        epilog="Configuration keys (YAML file, each overridable by its environment variable):\n"
        + describe(SiloConfig, "silo"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_config(SiloConfig, args.config, env_prefix="silo", environ=os.environ)
        run(config, stop_on_signals())
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return 2
    except TimeoutError as error:
        log.error("cannot reach the regional aggregator: %s", error)
        return 3
    return 0


def run(config: SiloConfig, stop: threading.Event) -> None:
    # TensorFlow loads with these, so `--help` and config errors answer at once.
    from silo.client import SiloClient
    from silo.data import load_dataset

    identity = certificate_identity(config.tls.cert)
    if identity.tier is not Tier.SILO or identity.jurisdiction != config.jurisdiction:
        raise ConfigError(
            f"certificate {config.tls.cert} names {identity}; a silo of {config.jurisdiction} needs "
            f"jurisfed://{config.jurisdiction}/silo/<node>"
        )
    dataset = load_dataset(config.data)
    log.info("data loaded", extra={"examples": len(dataset.labels), "identity": str(identity)})
    with open_channel(config.regional_address, config.tls) as channel:
        wait_until_serving(channel, timeout_s=config.connect_timeout_s)
        SiloClient(channel, dataset, seed=config.seed, stop=stop).run()
    log.info("stopped")
