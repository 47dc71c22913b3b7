"""Central differential privacy: clip each update, sum, add Gaussian noise, divide by the cohort.

The numpy twins of TFF's DifferentiallyPrivateFactory.gaussian_fixed (`dp_gaussian`) and
.gaussian_adaptive (`dp_adaptive`, the clipping norm follows a quantile of the update norms
as in Andrew et al. 2019, https://arxiv.org/abs/1905.03871). Both are unweighted: every
update counts once, whatever its example count, which is what bounds the sensitivity (the
clip) of the sum; the sum is divided by the expected cohort size `clients`, a constant, so
the noise is not data-dependent. Arithmetic follows TFF's float32 steps, and with zero noise
the results equal TFF's (tests/aggregation/test_factories.py). Per release, `dp_event()` is
the dp_accounting event that TFF reports for the same step, for the privacy ledger.

The noise is numpy's Gaussian generator seeded from OS entropy, as TFF uses TensorFlow's:
neither is a cryptographic sampler (see Mironov 2012 on floating-point noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jurisfed.aggregation.process import (
    Accumulation,
    AggregationFactory,
    AggregationProcess,
    Output,
    RuleState,
    global_l2_norm,
    positive,
)
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, Weights

_BLOCK = 64 * 1024
_F32 = np.float32


@dataclass(frozen=True)
class GaussianDP(AggregationFactory):
    """`dp_gaussian`: fixed clipping norm `clip`, noise stddev `noise_multiplier * clip`."""

    name: ClassVar[str] = "dp_gaussian"
    noise_multiplier: float
    clip: float
    clients: float

    def __post_init__(self) -> None:
        _non_negative("noise_multiplier", self.noise_multiplier)
        positive("clip", self.clip)
        positive("clients", self.clients)

    @property
    def weighted(self) -> bool:
        return False

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _PrivateSumProcess(spec, self, rng or np.random.default_rng())

    def to_tff(self) -> Any:
        import tensorflow_federated as tff  # noqa: PLC0415 - TFF only where its math runs

        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            float(self.noise_multiplier), float(self.clients), float(self.clip)
        )

    def dp_event(self) -> Any:  # a dp_accounting.DpEvent (an untyped library)
        """What one release of this rule costs, as the dp_accounting event TFF reports."""
        import dp_accounting  # type: ignore[import-untyped]  # noqa: PLC0415

        return dp_accounting.GaussianDpEvent(self.noise_multiplier)


@dataclass(frozen=True)
class AdaptiveGaussianDP(AggregationFactory):
    """`dp_adaptive`: the clip adapts towards the `target_quantile` of update norms.

    `noise_multiplier` is the effective one, covering the noised count of clipped updates
    too; `count_stddev` is that count's noise (default 0.05 * clients, as TFF).
    """

    name: ClassVar[str] = "dp_adaptive"
    noise_multiplier: float
    clients: float
    initial_clip: float = 0.1
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = -1.0  # negative: the default

    def __post_init__(self) -> None:
        _non_negative("noise_multiplier", self.noise_multiplier)
        positive("clients", self.clients)
        positive("initial_clip", self.initial_clip)
        _non_negative("learning_rate", self.learning_rate)
        if not 0.0 <= self.target_quantile <= 1.0:
            raise InvalidInput(f"target_quantile must be in [0, 1], got {self.target_quantile}")
        if self.count_stddev < 0:
            default = 0.05 * self.clients if self.noise_multiplier > 0 else 0.0
            object.__setattr__(self, "count_stddev", default)
        if self.noise_multiplier > 0 and self.noise_multiplier >= 2 * self.count_stddev:
            raise InvalidInput(
                f"count_stddev {self.count_stddev} is too small for noise_multiplier "
                f"{self.noise_multiplier}: it must exceed half of it (raise it or the cohort)"
            )

    @property
    def weighted(self) -> bool:
        return False

    @property
    def value_noise_multiplier(self) -> float:
        """Noise on the values alone, so that values and count together cost `noise_multiplier`."""
        if self.noise_multiplier == 0:
            return 0.0
        return float((self.noise_multiplier**-2 - (2 * self.count_stddev) ** -2) ** -0.5)

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _PrivateSumProcess(spec, self, rng or np.random.default_rng())

    def to_tff(self) -> Any:
        import tensorflow_federated as tff  # noqa: PLC0415

        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=float(self.noise_multiplier),
            clients_per_round=float(self.clients),
            initial_l2_norm_clip=float(self.initial_clip),
            target_unclipped_quantile=float(self.target_quantile),
            learning_rate=float(self.learning_rate),
            clipped_count_stddev=float(self.count_stddev),
        )

    def dp_event(self) -> Any:
        import dp_accounting  # noqa: PLC0415

        return dp_accounting.ComposedDpEvent(
            [
                dp_accounting.GaussianDpEvent(self.value_noise_multiplier),
                dp_accounting.GaussianDpEvent(self.count_stddev / 0.5),
            ]
        )


DPRule = GaussianDP | AdaptiveGaussianDP


def find_dp(factory: AggregationFactory) -> DPRule | None:
    """The DP rule inside `factory` (it may be wrapped by clip or zero), or None."""
    current: AggregationFactory | None = factory
    while current is not None:
        if isinstance(current, GaussianDP | AdaptiveGaussianDP):
            return current
        current = getattr(current, "inner", None)
    return None


class _PrivateSumProcess(AggregationProcess):
    def __init__(self, spec: ModelSpec, rule: DPRule, rng: np.random.Generator) -> None:
        super().__init__(spec)
        self.rule, self.rng = rule, rng

    def initialize(self) -> RuleState:
        if isinstance(self.rule, AdaptiveGaussianDP):
            return RuleState((("clip", self.rule.initial_clip),))
        return RuleState()

    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        return _PrivateSum(self, state)


class _PrivateSum(Accumulation):
    def __init__(self, process: _PrivateSumProcess, state: RuleState) -> None:
        self._process = process
        self._state = state
        rule = process.rule
        self._clip = _F32(state.get("clip") if isinstance(rule, AdaptiveGaussianDP) else rule.clip)
        self._sums: Weights = process.spec.zeros()
        self._scratch: FloatArray = np.empty(_BLOCK, dtype=np.float32)
        self._unclipped = _F32(0.0)  # sum over updates of (norm <= clip) - 1/2, as TFF counts

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        self._process.spec.check(update)
        norm = _F32(global_l2_norm(update))
        one = _F32(1.0)
        # tf.clip_by_global_norm: scale = clip * min(1 / norm, 1 / clip), in float32.
        scale = self._clip * min(one / norm if norm > 0 else np.inf, one / self._clip)
        for name, sums in self._sums.items():
            _fold(sums.reshape(-1), np.ascontiguousarray(update[name]).reshape(-1), scale, self._scratch)
        self._unclipped += _F32(1.0 if norm <= self._clip else 0.0) - _F32(0.5)

    def finish(self) -> Output:
        rule = self._process.rule
        value_noise = (
            rule.value_noise_multiplier if isinstance(rule, AdaptiveGaussianDP) else rule.noise_multiplier
        )
        stddev = _F32(self._clip * _F32(value_noise))
        clients = _F32(rule.clients)
        result: Weights = {}
        for name, sums in self._sums.items():
            if stddev > 0:
                _add_noise(sums.reshape(-1), stddev, self._process.rng, self._scratch)
            result[name] = np.divide(sums, clients, dtype=np.float32)
        if not isinstance(rule, AdaptiveGaussianDP):
            return Output(self._state, result, {"dp_query_metrics": {}, "dp": {}})
        clip = self._adapted_clip(rule, clients)
        state = RuleState((("clip", float(clip)),))
        return Output(state, result, {"dp_query_metrics": {"clip": float(clip)}, "dp": {}})

    def _adapted_clip(self, rule: AdaptiveGaussianDP, clients: np.float32) -> np.float32:
        """TFF's geometric quantile step: clip * exp(-lr * (noised unclipped fraction - target))."""
        noised = self._unclipped
        if rule.count_stddev > 0:
            noised = _F32(noised + _F32(self._process.rng.standard_normal() * rule.count_stddev))
        fraction = min(_F32(1.0), max(_F32(0.0), _F32(noised / clients) + _F32(0.5)))
        step = _F32(rule.learning_rate) * _F32(fraction - _F32(rule.target_quantile))
        return max(_F32(self._clip * _F32(math.exp(-step))), _F32(0.0))


def _fold(sums: FloatArray, values: FloatArray, scale: np.float32, scratch: FloatArray) -> None:
    for start in range(0, values.size, scratch.size):
        stop = min(start + scratch.size, values.size)
        block = scratch[: stop - start]
        np.multiply(values[start:stop], scale, out=block)
        np.add(sums[start:stop], block, out=sums[start:stop])


def _add_noise(sums: FloatArray, stddev: np.float32, rng: np.random.Generator, scratch: FloatArray) -> None:
    for start in range(0, sums.size, scratch.size):
        stop = min(start + scratch.size, sums.size)
        block = scratch[: stop - start]
        rng.standard_normal(dtype=np.float32, out=block)
        block *= stddev
        np.add(sums[start:stop], block, out=sums[start:stop])


def _non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative number, got {value}")
