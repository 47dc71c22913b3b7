"""What a tier that follows rounds does when told the federation finished: a regional following
the global, a silo following its regional.

The global answers FINISHED at once, and for as long as no round plan runs. A follower configured
with `exit_when_finished` leaves; any other stays, says once that it is idle, and asks again
every IDLE_POLL_S (the wait ends early on stop), so it takes part in the next plan without a
restart. A plan's regional deadline should leave room for that pause.
"""

from __future__ import annotations

import logging
import threading

IDLE_POLL_S = 5.0


class BetweenPlans:
    def __init__(self, stop: threading.Event, *, exit_when_finished: bool, log: logging.Logger) -> None:
        self._stop = stop
        self._exit_when_finished = exit_when_finished
        self._log = log
        self._idle = False

    def leave(self, last_round: int) -> bool:
        """On a FINISHED answer: True to leave; otherwise wait for the next plan (logged once)."""
        if self._exit_when_finished:
            return True
        if not self._idle:
            self._log.info("federation idle until the next round plan", extra={"last_round": last_round})
            self._idle = True
        self._stop.wait(IDLE_POLL_S)
        return False

    def round_announced(self) -> None:
        """A round is running again: the next FINISHED answer is news worth logging."""
        self._idle = False
