"""The replay cache: a token id works once, is forgotten only after expiry, and the cache stays bounded."""

from __future__ import annotations

import threading

import pytest

from jurisfed.auth.replay import ReplayCache
from jurisfed.errors import ConfigError, TooLarge


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_key_is_accepted_once_and_refused_while_it_lives() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock)
    assert cache.add("a", expires_at=1_060)
    assert not cache.add("a", expires_at=1_060)
    clock.now = 1_059.9
    assert not cache.add("a", expires_at=1_060)
    assert cache.add("b", expires_at=1_060)


def test_a_key_is_forgotten_once_it_has_expired() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock)
    cache.add("a", expires_at=1_060)
    clock.now = 1_060
    assert len(cache) == 0
    assert cache.add("a", expires_at=1_120)


def test_a_full_cache_refuses_new_keys_rather_than_forget_live_ones() -> None:
    clock = Clock()
    cache = ReplayCache(max_entries=2, clock=clock)
    cache.add("a", expires_at=1_010)
    cache.add("b", expires_at=1_020)
    with pytest.raises(TooLarge, match="retry shortly"):
        cache.add("c", expires_at=1_030)
    assert not cache.add("a", expires_at=1_010)  # still remembered: no eviction of live entries
    clock.now = 1_010  # "a" expires and frees its place
    assert cache.add("c", expires_at=1_030)
    assert len(cache) == 2


def test_an_already_expired_key_takes_no_place() -> None:
    clock = Clock()
    cache = ReplayCache(max_entries=1, clock=clock)
    assert cache.add("old", expires_at=999)
    assert len(cache) == 0


def test_concurrent_presentations_of_one_key_succeed_exactly_once() -> None:
    cache = ReplayCache()
    barrier = threading.Barrier(16)
    results: list[bool] = []
    lock = threading.Lock()

    def present() -> None:
        barrier.wait()
        accepted = cache.add(("jurisfed://EU/silo/a", "jti-1"), expires_at=2e9)
        with lock:
            results.append(accepted)

    threads = [threading.Thread(target=present) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


def test_a_cache_without_room_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one entry"):
        ReplayCache(max_entries=0)
