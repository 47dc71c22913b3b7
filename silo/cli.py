"""`python -m silo --config silo.yaml`: train beside the data and report to the regional."""

from __future__ import annotations

import logging
import threading

from jurisfed.auth.identity import Tier
from jurisfed.auth.pki import own_identity
from jurisfed.process import tier_main
from jurisfed.rpc.channel import open_channel, wait_until_serving
from silo.config import SiloConfig

log = logging.getLogger("jurisfed.silo")


def main(argv: list[str] | None = None) -> int:
    return tier_main(
        argv,
        prog="python -m silo",
        description="Run a silo trainer: read local data, train the round's model with TensorFlow for "
        "the contracted epochs, and stream only the weight delta to this jurisdiction's regional "
        "aggregator over mTLS. Raw records never leave this process.",
        config_type=SiloConfig,
        env_prefix="silo",
        run=run,
    )


def run(config: SiloConfig, stop: threading.Event) -> None:
    # TensorFlow loads with these, so `--help` and config errors answer at once.
    from silo.client import SiloClient
    from silo.data import load_dataset

    identity = own_identity(config.tls.cert, Tier.SILO, config.jurisdiction)
    dataset = load_dataset(config.data)
    log.info("data loaded", extra={"examples": len(dataset.labels), "identity": str(identity)})
    with open_channel(config.regional_address, config.tls) as channel:
        wait_until_serving(channel, timeout_s=config.connect_timeout_s)
        SiloClient(channel, dataset, seed=config.seed, stop=stop).run()
    log.info("stopped")
