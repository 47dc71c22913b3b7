"""Aggregation rules a round contract can name, composable by nesting as in tff.aggregators.

A rule is written as stages joined by `>`, outermost first, the last one a terminal:

    mean                                     weighted mean (example counts), TFF MeanFactory
    zero(norm=100.0, order=inf) > clip(norm=5.0) > mean
    clip(norm=5.0) > dp_gaussian(noise_multiplier=1.1, clip=1.0, clients=10.0)
    trimmed_mean(trim=0.1)

Wrappers: `clip(norm)` scales an update down to L2 norm `norm` (TFF clipping_factory);
`zero(norm, order=inf)` replaces an update whose L1/L2/max norm exceeds `norm` by zeros,
keeping its weight (TFF zeroing_factory); `screen(...)`, first if at all, keeps outliers out
and names them (screening.py). Terminals: `mean`, `unweighted_mean` (TFF
UnweightedMeanFactory), `median` and `trimmed_mean(trim)` (coordinate-wise, unweighted; TFF
has neither), `dp_gaussian` and `dp_adaptive` (see differential_privacy.py). Arguments are
always named; `str(parse_rule(text))` is the canonical text, every argument spelled out.

TFF's "clip -> DP -> mean" chain reads `clip(norm=...) > dp_gaussian(...)`: the DP rule
clips to its own norm, sums, adds noise and divides by `clients`, which is its mean.

Every factory builds a numpy process (`create`) and the TFF factory it mirrors (`to_tff`);
tests/aggregation/test_factories.py proves the two agree. Measurements nest like TFF's:
`clip > mean` measures {"clipping": {"mean_value": {}, "mean_weight": {}}, "clipping_norm":
5.0, "clipped_count": 2}.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from jurisfed.aggregation.differential_privacy import AdaptiveGaussianDP, GaussianDP
from jurisfed.aggregation.process import (
    Accumulation,
    AggregationFactory,
    AggregationProcess,
    Measurements,
    Output,
    RuleState,
    Wrapper,
    check_weight,
    global_l2_norm,
    positive,
)
from jurisfed.aggregation.robust import UpdateStack, coordinate_median, trimmed_mean, trimmed_per_side
from jurisfed.aggregation.screening import Screen
from jurisfed.aggregation.streaming_mean import StreamingWeightedMean
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.tensors import FloatArray, ModelSpec, Weights

# --- terminals ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedMean(AggregationFactory):
    name: ClassVar[str] = "mean"

    @property
    def weighted(self) -> bool:
        return True

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _MeanProcess(spec, weighted=True)

    def to_tff(self) -> Any:
        import tensorflow_federated as tff  # noqa: PLC0415 - TFF only where its math runs

        return tff.aggregators.MeanFactory()


@dataclass(frozen=True)
class UnweightedMean(AggregationFactory):
    name: ClassVar[str] = "unweighted_mean"

    @property
    def weighted(self) -> bool:
        return False

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _MeanProcess(spec, weighted=False)

    def to_tff(self) -> Any:
        import tensorflow_federated as tff  # noqa: PLC0415

        return tff.aggregators.UnweightedMeanFactory()


@dataclass(frozen=True)
class CoordinateMedian(AggregationFactory):
    name: ClassVar[str] = "median"
    keeps_every_update: ClassVar[bool] = True

    @property
    def weighted(self) -> bool:
        return False

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _OrderStatisticProcess(spec, coordinate_median, lambda count: {})

    def to_tff(self) -> Any:
        raise NotImplementedError("TFF has no coordinate-wise median; compare with np.median")


@dataclass(frozen=True)
class TrimmedMean(AggregationFactory):
    """Per coordinate, the mean without the int(trim * N) smallest and largest values."""

    name: ClassVar[str] = "trimmed_mean"
    keeps_every_update: ClassVar[bool] = True
    trim: float = 0.1

    def __post_init__(self) -> None:
        trimmed_per_side(1, self.trim)  # validates the fraction

    @property
    def weighted(self) -> bool:
        return False

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _OrderStatisticProcess(
            spec,
            lambda stack: trimmed_mean(stack, self.trim),
            lambda count: {"trimmed_per_side": trimmed_per_side(count, self.trim)},
        )

    def to_tff(self) -> Any:
        raise NotImplementedError("TFF has no trimmed mean; compare with scipy.stats.trim_mean")


class _MeanProcess(AggregationProcess):
    def __init__(self, spec: ModelSpec, *, weighted: bool) -> None:
        super().__init__(spec)
        self.weighted = weighted

    def initialize(self) -> RuleState:
        return RuleState()

    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        return _Mean(self.spec, state, weighted=self.weighted)


class _Mean(Accumulation):
    def __init__(self, spec: ModelSpec, state: RuleState, *, weighted: bool) -> None:
        self._mean = StreamingWeightedMean(spec)
        self._state = state
        self._weighted = weighted

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        self._mean.add(update, weight if self._weighted else 1.0)

    def finish(self) -> Output:
        counted = "mean_weight" if self._weighted else "mean_count"
        return Output(self._state, self._mean.result(), {"mean_value": {}, counted: {}})


class _OrderStatisticProcess(AggregationProcess):
    def __init__(
        self,
        spec: ModelSpec,
        reduce: Callable[[UpdateStack], FloatArray],
        measure: Callable[[int], Measurements],
    ) -> None:
        super().__init__(spec)
        self.reduce = reduce
        self.measure = measure

    def initialize(self) -> RuleState:
        return RuleState()

    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        return _OrderStatistic(self, state, max(expected_updates, 8))


class _OrderStatistic(Accumulation):
    """Keeps a copy of every update (N times the model), one UpdateStack per tensor."""

    def __init__(self, process: _OrderStatisticProcess, state: RuleState, capacity: int) -> None:
        self._process = process
        self._state = state
        self._stacks = {t.name: UpdateStack(t.size, capacity) for t in process.spec.tensors}

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        self._process.spec.check(update)
        if not all(np.isfinite(values).all() for values in update.values()):
            raise InvalidInput("update holds NaN or infinity")  # refused alone, not at the close
        for name, stack in self._stacks.items():
            stack.append(update[name])

    def finish(self) -> Output:
        count = min(len(stack) for stack in self._stacks.values())
        if not count:
            raise WrongState("no update has been added, so there is nothing to aggregate")
        result = {
            t.name: self._process.reduce(self._stacks[t.name]).reshape(t.shape)
            for t in self._process.spec.tensors
        }
        return Output(self._state, result, self._process.measure(count))


# --- wrappers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip(Wrapper):
    """Scales an update whose global L2 norm exceeds `norm` down to `norm`; weight unchanged."""

    name: ClassVar[str] = "clip"
    norm: float

    def __post_init__(self) -> None:
        positive("clip norm", self.norm)

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _WrapperProcess(spec, self, self.inner.create(spec, rng=rng))

    def to_tff(self) -> Any:
        import tensorflow_federated as tff  # noqa: PLC0415

        return tff.aggregators.clipping_factory(float(self.norm), self.inner.to_tff())


@dataclass(frozen=True)
class Zero(Wrapper):
    """Replaces an update whose norm of `order` (1, 2 or inf) exceeds `norm` by zeros."""

    name: ClassVar[str] = "zero"
    norm: float
    order: float = math.inf

    def __post_init__(self) -> None:
        positive("zeroing norm", self.norm)
        if self.order not in (1.0, 2.0, math.inf):
            raise InvalidInput(f"zeroing order must be 1, 2 or inf, got {self.order}")

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _WrapperProcess(spec, self, self.inner.create(spec, rng=rng))

    def to_tff(self) -> Any:
        import tensorflow_federated as tff  # noqa: PLC0415

        return tff.aggregators.zeroing_factory(
            float(self.norm), self.inner.to_tff(), norm_order=float(self.order)
        )


class _WrapperProcess(AggregationProcess):
    def __init__(self, spec: ModelSpec, rule: Clip | Zero, inner: AggregationProcess) -> None:
        super().__init__(spec)
        self.rule = rule
        self.inner = inner

    def initialize(self) -> RuleState:
        return RuleState(inner=self.inner.initialize())

    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        if state.inner is None:
            raise InvalidInput(f"state of {self.rule.name} lacks its inner rule's state")
        return _Wrapped(self, self.inner.start(state.inner, expected_updates=expected_updates))


class _Wrapped(Accumulation):
    def __init__(self, process: _WrapperProcess, inner: Accumulation) -> None:
        self._process = process
        self._inner = inner
        self._changed = 0
        self._scratch: Weights | None = None  # one update-sized buffer, reused

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        spec, rule = self._process.spec, self._process.rule
        spec.check(update)
        check_weight(weight)
        changed: Mapping[str, FloatArray] | None = None
        if isinstance(rule, Clip):
            norm = np.float32(global_l2_norm(update))
            if norm > np.float32(rule.norm):  # as TFF: x / (norm / clip), in float32
                changed = self._buffer()
                divisor = norm / np.float32(rule.norm)
                for name, values in update.items():
                    np.divide(values, divisor, out=changed[name])
        elif _norm(update, rule.order) > np.float32(rule.norm):
            changed = self._buffer()
            for values in changed.values():
                values.fill(0.0)
        self._inner.add(update if changed is None else changed, weight)
        self._changed += changed is not None

    def _buffer(self) -> Weights:
        if self._scratch is None:
            self._scratch = self._process.spec.zeros()
        return self._scratch

    def finish(self) -> Output:
        inner = self._inner.finish()
        done = "clipp" if isinstance(self._process.rule, Clip) else "zero"
        measurements: Measurements = {
            f"{done}ing": inner.measurements,
            f"{done}ing_norm": self._process.rule.norm,
            f"{done}ed_count": self._changed,
        }
        return Output(RuleState(inner=inner.state), inner.result, measurements)


def _norm(update: Mapping[str, FloatArray], order: float) -> np.float32:
    if order == 2.0:
        return np.float32(global_l2_norm(update))
    parts = [float(np.linalg.norm(np.ascontiguousarray(v).reshape(-1), order)) for v in update.values()]
    norm = max(parts) if order == math.inf else sum(parts)
    if not math.isfinite(norm):
        raise InvalidInput("update holds NaN or infinity, or its norm overflows")
    return np.float32(norm)


# --- naming rules in a contract ----------------------------------------------------------

RULES: dict[str, type[AggregationFactory]] = {
    rule.name: rule
    for rule in (
        WeightedMean,
        UnweightedMean,
        CoordinateMedian,
        TrimmedMean,
        GaussianDP,
        AdaptiveGaussianDP,
        Clip,
        Zero,
        Screen,
    )
}
_STAGE = re.compile(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*")


def parse_rule(text: str) -> AggregationFactory:
    """The factory a contract's rule text names; InvalidInput, naming the stage, if malformed."""
    stages = text.split(">")
    factory: AggregationFactory | None = None
    for stage in reversed(stages):
        match = _STAGE.fullmatch(stage)
        if match is None:
            raise InvalidInput(
                f"rule {text!r}: cannot read stage {stage.strip()!r}; expected name(key=value, ...)"
            )
        name, arguments = match.group(1), match.group(2)
        rule = RULES.get(name)
        if rule is None:
            raise InvalidInput(f"rule {text!r}: unknown rule {name!r}; known: {', '.join(sorted(RULES))}")
        settings = _arguments(text, rule, arguments or "")
        try:
            if issubclass(rule, Wrapper):
                if factory is None:
                    raise InvalidInput(f"rule {text!r}: {name} wraps another rule, so it cannot come last")
                factory = rule(**settings, inner=factory)
            elif factory is None:
                factory = rule(**settings)
            else:
                raise InvalidInput(f"rule {text!r}: {name} is a terminal rule, so it must come last")
        except TypeError as error:  # a required argument is missing
            raise InvalidInput(f"rule {text!r}: {name}: {error}") from error
    assert factory is not None  # str.split always yields at least one stage
    inner = getattr(factory, "inner", None)
    while inner is not None:
        if isinstance(inner, Screen):
            raise InvalidInput(
                f"rule {text!r}: screen judges the updates as they arrive, so it must come first"
            )
        inner = getattr(inner, "inner", None)
    return factory


def _arguments(text: str, rule: type[AggregationFactory], arguments: str) -> dict[str, float]:
    known = [f.name for f in fields(rule) if f.name != "inner"]
    settings: dict[str, float] = {}
    for argument in filter(None, (part.strip() for part in arguments.split(","))):
        key, equals, value = (piece.strip() for piece in argument.partition("="))
        if not equals or key not in known:
            raise InvalidInput(
                f"rule {text!r}: {rule.name} takes named arguments {known or 'none'}, got {argument!r}"
            )
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isnan(number) or key in settings:
            raise InvalidInput(f"rule {text!r}: {rule.name}: {key} must be given once, as a number")
        settings[key] = number
    return settings
