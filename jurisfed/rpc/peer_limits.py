"""Per-peer caps: no single node may hog an aggregator's threads or flood it with calls.

Each verified peer identity (from its certificate) gets at most `max_in_flight` calls at once
and a token bucket of `calls_per_s` with bursts up to `burst`. A call over either cap is
refused with RESOURCE_EXHAUSTED before its handler runs; well-behaved clients retry with
backoff (`jurisfed.rpc.retry`). Health checks are exempt, so a probe is never starved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from jurisfed.auth.identity import Identity, peer_identity
from jurisfed.errors import ConfigError, TooLarge
from jurisfed.rpc.call_guard import AdmissionInterceptor

EXEMPT_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class PeerLimits:
    max_in_flight: int = 8
    calls_per_s: float = 50.0
    burst: int = 100

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.calls_per_s <= 0 or self.burst < 1:
            raise ConfigError("peer limits must be positive: max_in_flight, calls_per_s and burst")


class _Bucket:
    __slots__ = ("in_flight", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.in_flight = 0


class PeerLimitInterceptor(AdmissionInterceptor):
    def __init__(self, limits: PeerLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: dict[Identity, _Bucket] = {}

    def exempt(self, method: str) -> bool:
        return method.startswith(EXEMPT_PREFIX)

    @contextmanager
    def admit(self, context: grpc.ServicerContext) -> Iterator[None]:
        peer = peer_identity(context)
        self._take(peer)
        try:
            yield
        finally:
            with self._lock:
                self._peers[peer].in_flight -= 1

    def _take(self, peer: Identity) -> None:
        limits, now = self._limits, self._clock()
        with self._lock:
            bucket = self._peers.setdefault(peer, _Bucket(float(limits.burst), now))
            bucket.tokens = min(
                float(limits.burst), bucket.tokens + (now - bucket.updated) * limits.calls_per_s
            )
            bucket.updated = now
            if bucket.in_flight >= limits.max_in_flight:
                raise TooLarge(f"{peer} already has {bucket.in_flight} calls in flight; retry later")
            if bucket.tokens < 1:
                raise TooLarge(f"{peer} calls more than {limits.calls_per_s:g} times a second; retry later")
            bucket.tokens -= 1
            bucket.in_flight += 1
