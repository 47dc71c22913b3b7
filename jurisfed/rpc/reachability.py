"""Whether a peer this node depends on can be reached, judged from the outcome of its calls.

Calls report each attempt: `reached()` when the peer answered (a refusal is an answer too),
`failed()` when it could not be reached (UNAVAILABLE, a deadline, no connection). The peer
counts as unreachable once attempts have failed, with no answer in between, for longer than
`threshold_s`, judged at the first failed attempt past it, and as reachable again at its next
answer; each change is logged and handed to `on_change` (the regional turns it into its health
status and an audit event).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("jurisfed.rpc.reachability")


@dataclass(frozen=True)
class Change:
    """The peer became unreachable (`reachable` False) or reachable again."""

    peer: str
    reachable: bool
    failing_s: float  # how long attempts had been failing when it changed


class Reachability:
    def __init__(
        self,
        peer: str,
        threshold_s: float,
        on_change: Callable[[Change], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold_s <= 0:
            raise ValueError("threshold_s must be positive")
        self._peer = peer
        self._threshold_s = threshold_s
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._reachable = True

    @property
    def reachable(self) -> bool:
        return self._reachable

    def reached(self) -> None:
        """The peer answered."""
        with self._lock:
            failing_s = 0.0 if self._failing_since is None else self._clock() - self._failing_since
            self._failing_since = None
            if self._reachable:
                return
            self._reachable = True
            change = Change(self._peer, True, failing_s)
            log.info("peer reachable again", extra={"peer": self._peer, "failing_s": round(failing_s, 1)})
            self._on_change(change)

    def failed(self) -> None:
        """An attempt to reach the peer failed."""
        with self._lock:
            now = self._clock()
            if self._failing_since is None:
                self._failing_since = now
            failing_s = now - self._failing_since
            if not self._reachable or failing_s <= self._threshold_s:
                return
            self._reachable = False
            change = Change(self._peer, False, failing_s)
            log.warning(
                "peer unreachable past its threshold",
                extra={
                    "peer": self._peer,
                    "failing_s": round(failing_s, 1),
                    "threshold_s": self._threshold_s,
                },
            )
            self._on_change(change)
