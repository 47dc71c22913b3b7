"""Client-side calls that ride out transient failures: backoff on UNAVAILABLE and friends,
give up (logged) on a real refusal, stop when the process is stopping. Each attempt can be
reported to a `Link` (see `jurisfed.rpc.reachability`): answered, or could not reach the peer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc

from jurisfed.errors import JurisfedError

T = TypeVar("T")

# Delays between attempts: grows to the last value, then stays there.
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
# Of those, the ones that say the peer was not reached (RESOURCE_EXHAUSTED is its answer).
UNREACHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class Link(Protocol):
    """Hears whether each attempt reached the peer."""

    def reached(self) -> None: ...

    def failed(self) -> None: ...


def with_retry(
    what: str,
    action: Callable[[], T],
    *,
    stop: threading.Event,
    log: logging.Logger,
    link: Link | None = None,
) -> T | None:
    """Run `action` until it succeeds; None if it was refused, or `stop` was set first.

    `link`, if given, hears of each attempt: `reached` when the peer answered (a refusal is an
    answer), `failed` when it could not be reached (UNAVAILABLE, a deadline, no connection).
    """
    attempt = 0
    while not stop.is_set():
        try:
            result = action()
        except grpc.RpcError as error:
            if stop.is_set():
                return None  # the process is stopping; its channel was closed under the call
            code = error.code()
            if link is not None and code in UNREACHED:
                link.failed()
            elif link is not None:
                link.reached()
            if code not in RETRYABLE:
                log.error("%s refused: %s %s", what, code.name, error.details())
                return None
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            log.warning("cannot %s (%s); retrying in %.1f s", what, code.name, delay)
            attempt += 1
            stop.wait(delay)
        except JurisfedError as error:
            log.error("cannot %s: %s", what, error)
            return None
        except OSError as error:  # a plain connection (a TLS probe) that could not be made
            if link is not None:
                link.failed()
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            log.warning("cannot %s (%s); retrying in %.1f s", what, error.strerror or error, delay)
            attempt += 1
            stop.wait(delay)
        else:
            if link is not None:
                link.reached()
            return result
    return None
