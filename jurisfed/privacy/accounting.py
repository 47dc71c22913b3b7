"""Privacy accounting: DP releases as dp_accounting events, epsilon(delta) by Renyi DP.

A release is described by a dp_accounting `DpEvent`, the same object TFF's DP aggregators
report: a Gaussian mechanism with noise multiplier z (noise stddev / clipping norm), applied
to a cohort sampled with probability q, `steps` times. Epsilon of a sequence of releases is
the RDP accountant's (Mironov 2017; Balle et al. 2020 conversion) over the composition.

Each event's RDP curve (its divergence at every order) is computed once and cached, so the
epsilon of a long history is a sum of cached curves: the ledger re-derives it every time
it answers, instead of trusting a running total. Events are stored as canonical JSON limited
to the event types the RDP accountant supports; reading one never imports anything by name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeAlias

import attr
import dp_accounting  # type: ignore[import-untyped]
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

from jurisfed.errors import InvalidInput

DpEvent: TypeAlias = Any  # a dp_accounting.DpEvent; the library ships no type information

# The delta reports use when none is given (one in 100 000: below 1/n for a cohort of silos).
DEFAULT_DELTA = 1e-5
ORDERS: tuple[float, ...] = tuple(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

# Event types a stored release may hold: those the RDP accountant can compose.
_EVENT_TYPES: dict[str, Any] = {  # name -> dp_accounting event class
    cls.__name__: cls
    for cls in (
        dp_accounting.NoOpDpEvent,
        dp_accounting.NonPrivateDpEvent,
        dp_accounting.GaussianDpEvent,
        dp_accounting.LaplaceDpEvent,
        dp_accounting.PoissonSampledDpEvent,
        dp_accounting.SelfComposedDpEvent,
        dp_accounting.ComposedDpEvent,
    )
}


def gaussian_event(noise_multiplier: float, *, sampling_rate: float = 1.0, steps: int = 1) -> DpEvent:
    """`steps` Gaussian releases, each over a cohort sampled with probability `sampling_rate`."""
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise InvalidInput(f"noise multiplier must be a non-negative number, got {noise_multiplier}")
    return release_event(
        dp_accounting.GaussianDpEvent(float(noise_multiplier)), sampling_rate=sampling_rate, steps=steps
    )


def release_event(mechanism: DpEvent, *, sampling_rate: float = 1.0, steps: int = 1) -> DpEvent:
    """`mechanism` (e.g. a DP rule's `dp_event()`) on a Poisson-sampled cohort, `steps` times."""
    if not 0.0 < sampling_rate <= 1.0:
        raise InvalidInput(f"sampling rate must be in (0, 1], got {sampling_rate}")
    if steps < 1:
        raise InvalidInput(f"a release takes at least one step, got {steps}")
    event = mechanism
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(float(sampling_rate), event)
    return dp_accounting.SelfComposedDpEvent(event, int(steps)) if steps > 1 else event


def epsilon(events: Iterable[DpEvent], delta: float) -> float:
    """Epsilon at `delta` of all `events` composed (0 for none, inf without privacy)."""
    return stored_epsilon((event_to_json(event) for event in events), delta)


def stored_epsilon(event_jsons: Iterable[str], delta: float) -> float:
    """`epsilon` of events given as their canonical JSON (as the ledger stores them)."""
    _check_delta(delta)
    total = np.zeros(len(ORDERS))
    for event_json in event_jsons:
        total += rdp_curve(event_json)  # composition adds RDP curves, in recording order
    return float(rdp_privacy_accountant.compute_epsilon(ORDERS, total, delta)[0])


def epsilons_over_time(event_jsons: Iterable[str], delta: float) -> list[float]:
    """Epsilon after the first event, the first two, ... all of them, in that order."""
    _check_delta(delta)
    total = np.zeros(len(ORDERS))
    values = []
    for event_json in event_jsons:
        total += rdp_curve(event_json)
        values.append(float(rdp_privacy_accountant.compute_epsilon(ORDERS, total, delta)[0]))
    return values


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise InvalidInput(f"delta must be in (0, 1), got {delta}")


@lru_cache(maxsize=1024)
def rdp_curve(event_json: str) -> tuple[float, ...]:
    """One event's Renyi divergence at each of ORDERS, as the RDP accountant composes it."""
    accountant = rdp_privacy_accountant.RdpAccountant(list(ORDERS))
    event = event_from_json(event_json)
    if not accountant.supports(event):
        raise InvalidInput(f"the RDP accountant cannot account for {describe(event)} ({event_json})")
    accountant.compose(event)
    return tuple(float(value) for value in accountant.rdp)


def event_to_json(event: DpEvent) -> str:
    """Canonical JSON of an event; InvalidInput if the RDP accountant cannot account for it."""
    return json.dumps(_plain(event), sort_keys=True, separators=(",", ":"))


def event_from_json(text: str) -> DpEvent:
    try:
        return _event(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InvalidInput(f"not a stored privacy event: {error}") from error


def describe(event: DpEvent) -> str:
    """A short reading of an event for people: 'Gaussian z=1.1, q=0.1, x100'."""
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return f"Gaussian z={event.noise_multiplier:g}"
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        return f"Laplace b={event.noise_multiplier:g}"
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return f"{describe(event.event)}, q={event.sampling_probability:g}"
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return f"{describe(event.event)}, x{event.count}"
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return " + ".join(describe(inner) for inner in event.events)
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return "not private"
    return "no release"


def _plain(event: DpEvent) -> dict[str, object]:
    name = type(event).__name__
    if _EVENT_TYPES.get(name) is not type(event):
        raise InvalidInput(f"privacy event {event!r} cannot be accounted for by the RDP accountant")
    plain: dict[str, object] = {"type": name}
    for field in attr.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, list | tuple):
            plain[field.name] = [_plain(inner) for inner in value]
        elif isinstance(value, dp_accounting.DpEvent):
            plain[field.name] = _plain(value)
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            plain[field.name] = int(value)
        else:
            plain[field.name] = float(value)
    return plain


def _event(plain: Mapping[str, Any]) -> DpEvent:
    cls = _EVENT_TYPES[plain["type"]]
    settings: dict[str, object] = {}
    for field in attr.fields(cls):
        value = plain[field.name]
        if isinstance(value, list):
            settings[field.name] = [_event(inner) for inner in value]
        elif isinstance(value, dict):
            settings[field.name] = _event(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            settings[field.name] = value
        else:
            raise TypeError(f"{field.name} of {cls.__name__} must be a number, got {value!r}")
    return cls(**settings)
