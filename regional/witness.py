"""The regional's half of mutual witnessing: exchange signed audit checkpoints with the global
every `interval_s` seconds and once more when stopping, so each holds the other's newest one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from jurisfed.audit.errors import AuditIntegrityError
from jurisfed.audit.log import AuditLog
from jurisfed.audit.witness import WitnessBook
from jurisfed.audit.witness_link import exchange
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Tier
from jurisfed.errors import JurisfedError

log = logging.getLogger("jurisfed.regional.witness")


class WitnessLoop:
    def __init__(
        self,
        audit: AuditLog,
        book: WitnessBook,
        dial: Callable[[], grpc.Channel],
        stop: threading.Event,
        *,
        interval_s: float,
    ) -> None:
        self._audit = audit
        self._book = book
        self._dial = dial
        self._stop = stop
        self._interval_s = interval_s

    def run(self) -> None:
        """Exchange until `stop` is set, then once more so the final records are witnessed too."""
        channel: grpc.Channel | None = None
        try:
            while True:
                stopping = self._stop.wait(self._interval_s)
                channel = channel or self._connect()
                if channel is not None:
                    self._exchange(channel)
                if stopping:
                    return
        finally:
            if channel is not None:
                channel.close()

    def _connect(self) -> grpc.Channel | None:
        try:
            return self._dial()
        except (OSError, JurisfedError) as error:
            log.warning("cannot reach the global to exchange audit checkpoints", extra={"error": str(error)})
            return None

    def _exchange(self, channel: grpc.Channel) -> None:
        try:
            peers = [
                p for p in self._book.peers if p.tier is Tier.GLOBAL and p.jurisdiction == GLOBAL_JURISDICTION
            ]
            for peer in peers:
                held = exchange(channel, self._audit, self._book, peer)
                log.info(
                    "audit checkpoints exchanged", extra={"peer": str(peer), "witnessed_size": held.size}
                )
        except grpc.RpcError as error:
            log.warning(
                "checkpoint exchange refused", extra={"code": error.code().name, "details": error.details()}
            )
        except AuditIntegrityError as error:  # a forked or truncated peer log: recorded by the book
            log.error(
                "the global's audit log contradicts what this regional witnessed", extra={"error": str(error)}
            )
