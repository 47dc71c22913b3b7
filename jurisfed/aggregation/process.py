"""The shape every aggregation rule takes, after tff.aggregators: factory -> process -> output.

A factory is a frozen description of a rule (what a round contract names); `create(spec)`
makes a process for one model. A process has `initialize()` and `next(state, updates,
weights)`, which returns an `Output`: the new state, the result and the measurements, never
mixed. Rules nest (clip -> DP mean), and the measurements come out nested under the names of
the outer rules, as in TFF.

A process also takes updates one at a time: `start(state)` returns an `Accumulation`, which
the regional feeds as uploads complete and finishes when the round closes; `next` is exactly
start, add each, finish. `add` copies what it keeps, so the caller may reuse its buffer.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeAlias

import numpy as np

from jurisfed.aggregation.diagnostics import Diagnosis
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, Weights

# A rule's measurements: numbers, and the measurements of the rule it wraps under one name.
Measurements: TypeAlias = Mapping[str, "float | Measurements"]


@dataclass(frozen=True)
class RuleState:
    """A rule's state between rounds: its own numbers and the state of the rule it wraps.

    Small and plain so a tier can persist it (an adaptive clipping norm must survive restarts).
    """

    values: tuple[tuple[str, float], ...] = ()
    inner: RuleState | None = None

    def get(self, name: str) -> float:
        for key, value in self.values:
            if key == name:
                return value
        raise InvalidInput(f"rule state has no {name!r}; it holds {[key for key, _ in self.values]}")

    def to_json(self) -> str:
        return json.dumps(self._plain(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RuleState:
        try:
            return cls._from_plain(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise InvalidInput(f"not a saved rule state: {error}") from error

    def _plain(self) -> dict[str, object]:
        return {"values": dict(self.values), "inner": None if self.inner is None else self.inner._plain()}

    @classmethod
    def _from_plain(cls, plain: Mapping[str, Any]) -> RuleState:
        values = tuple((str(key), float(value)) for key, value in plain["values"].items())
        inner = plain["inner"]
        return cls(values, None if inner is None else cls._from_plain(inner))


@dataclass(frozen=True)
class Output:
    state: RuleState
    result: Weights
    measurements: Measurements


class Accumulation(abc.ABC):
    """One round of a process, fed one update at a time."""

    @abc.abstractmethod
    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        """Take one update (copied if kept); InvalidInput, and no change, if it is malformed."""

    def add_from(self, sender: str, update: Mapping[str, FloatArray], weight: float) -> None:
        """`add`, naming who sent the update (a screening rule reports its diagnoses by sender)."""
        self.add(update, weight)

    @property
    def diagnoses(self) -> tuple[Diagnosis, ...]:
        """The outlier diagnosis of every update, for a screening rule (after `finish`); else none."""
        return ()

    @abc.abstractmethod
    def finish(self) -> Output:
        """The round's output; the accumulation is spent afterwards."""


class AggregationProcess(abc.ABC):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def initialize(self) -> RuleState: ...

    @abc.abstractmethod
    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        """Open a round; `expected_updates` sizes the memory of rules that keep every update."""

    def next(
        self,
        state: RuleState,
        updates: Sequence[Mapping[str, FloatArray]],
        weights: Sequence[float] | None = None,
    ) -> Output:
        """All of a round's updates at once (weights default to 1; unweighted rules ignore them)."""
        accumulation = self.start(state, expected_updates=len(updates))
        for update, weight in zip(updates, weights or [1.0] * len(updates), strict=True):
            accumulation.add(update, weight)
        return accumulation.finish()


@dataclass(frozen=True)
class AggregationFactory(abc.ABC):
    """A rule as a round contract names it: `name(key=value, ...)`, wrappers before ` > `."""

    name: ClassVar[str]
    # Whether the rule holds every update until the round closes (an order statistic).
    keeps_every_update: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def weighted(self) -> bool:
        """Whether update weights (example counts) enter the result."""

    @abc.abstractmethod
    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        """A process for `spec`; `rng` draws noise for rules that add it (None: OS entropy)."""

    @abc.abstractmethod
    def to_tff(self) -> Any:  # a tff.aggregators factory (TFF ships no types)
        """The same rule as a tff.aggregators factory (imports TFF), for tests and simulation."""

    def __str__(self) -> str:
        settings = [f"{f.name}={_number(getattr(self, f.name))}" for f in fields(self) if f.name != "inner"]
        text = f"{self.name}({', '.join(settings)})" if settings else self.name
        inner = getattr(self, "inner", None)
        return f"{text} > {inner}" if inner is not None else text


@dataclass(frozen=True)
class Wrapper(AggregationFactory):
    """A rule that transforms each update and hands it to an inner rule (clip, zero)."""

    inner: AggregationFactory = field(kw_only=True)

    @property
    def weighted(self) -> bool:
        return self.inner.weighted


def _number(value: object) -> str:
    return repr(float(value)) if isinstance(value, int | float) else str(value)


def check_weight(weight: float) -> None:
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidInput(f"update weight must be finite and positive, got {weight}")


def positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{name} must be a positive number, got {value}")


def flatten(measurements: Measurements, prefix: str = "") -> dict[str, float]:
    """Measurements as `outer/inner/name -> value`, for metrics and logs."""
    flat: dict[str, float] = {}
    for key, value in measurements.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = float(value)
    return flat


def global_l2_norm(update: Mapping[str, FloatArray]) -> float:
    """The L2 norm of all tensors together; InvalidInput if it is not finite (NaN, infinity)."""
    squares = 0.0
    for values in update.values():
        flat = np.ascontiguousarray(values).reshape(-1)
        squares += float(np.dot(flat, flat))
    norm = math.sqrt(squares)
    if not math.isfinite(norm):
        raise InvalidInput("update holds NaN or infinity, or its norm overflows")
    return norm
