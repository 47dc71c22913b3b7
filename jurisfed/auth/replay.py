"""A bounded, thread-safe memory of token ids (``jti``) seen, each kept until its token expires.

A token can be replayed only while it is still valid, so an id may be forgotten once its
token's expiry (plus the clock leeway) has passed; forgetting it earlier would let the token
be used twice. The cache therefore never evicts a live entry: when it is full of live ones it
refuses new tokens (RESOURCE_EXHAUSTED, which clients retry) rather than fail open.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Hashable

from jurisfed.errors import ConfigError, TooLarge

DEFAULT_MAX_ENTRIES = 65_536


class ReplayCache:
    """Remembers keys until their expiry time (seconds since the epoch, on `clock`)."""

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ConfigError(f"the replay cache must hold at least one entry, not {max_entries}")
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[Hashable, float] = {}
        # (expiry, sequence, key): the sequence breaks ties without comparing keys.
        self._queue: list[tuple[float, int, Hashable]] = []
        self._sequence = 0

    def add(self, key: Hashable, *, expires_at: float) -> bool:
        """Remember `key` until `expires_at`; False when it is already remembered (a replay).

        Raises `TooLarge` when the cache is full of entries that have not expired yet.
        """
        with self._lock:
            now = self._clock()
            self._forget_expired(now)
            if key in self._expiry:
                return False
            if expires_at <= now:
                return True  # already expired: a replay of it would be refused as expired
            if len(self._expiry) >= self._max_entries:
                raise TooLarge("too many tokens in flight to remember them all; retry shortly")
            self._expiry[key] = expires_at
            self._sequence += 1
            heapq.heappush(self._queue, (expires_at, self._sequence, key))
            return True

    def __len__(self) -> int:
        with self._lock:
            self._forget_expired(self._clock())
            return len(self._expiry)

    def _forget_expired(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            _, _, key = heapq.heappop(self._queue)
            del self._expiry[key]
