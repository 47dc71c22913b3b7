"""What every jurisfed process does the same way: JSON logs, stop signals, readiness file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from jurisfed.config import describe, load_config
from jurisfed.errors import ConfigError, NotAllowed

C = TypeVar("C")

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so the process drains and exits cleanly."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("jurisfed").info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def split_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); a clear ConfigError otherwise."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{address!r} is not a host:port address")
    return host.strip("[]"), int(port)


def write_ready_file(path: Path | None, address: str) -> None:
    """Tell whoever started this process where it serves, once it does (atomic write)."""
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(address + "\n")
    os.replace(temporary, path)


def tier_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    config_type: type[C],
    env_prefix: str,
    run: Callable[[C, threading.Event], None],
) -> int:
    """The command line every tier shares: --config and --log-level, then `run` until a stop signal.

    Exit codes: 0 after a clean stop, 2 for a configuration that cannot start, 3 when a peer
    stayed unreachable for longer than the configuration allows, 4 when a residency policy or
    an identity check refuses what the node was configured to do.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Configuration keys (YAML file, each overridable by its environment variable):\n"
        + describe(config_type, env_prefix),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    log = logging.getLogger("jurisfed")
    try:
        config = load_config(config_type, args.config, env_prefix=env_prefix, environ=os.environ)
        run(config, stop_on_signals())
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return 2
    except TimeoutError as error:
        log.error("gave up: %s", error)
        return 3
    except NotAllowed as error:
        log.error("refused: %s", error)
        return 4
    return 0
