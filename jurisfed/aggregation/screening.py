"""`screen(...)`: the poisoning screen as the outermost stage of a rule, so a contract switches it on.

    screen(max_norm_ratio=4.0, min_cosine=0.0) > trimmed_mean(trim=0.2)
    screen() > clip(norm=5.0) > mean

Every update is diagnosed by the OutlierRule of diagnostics.py; an outlier is not handed to the
rule it wraps, and its diagnosis names it, so the tier quarantines its sender. How depends on
the wrapped rule:
  - a rule that folds updates in as they arrive (mean, clip, DP): each update is judged when it
    arrives against those admitted before it (UpdateScreen), so memory stays one model; the
    norms it admitted are the screen's state, carried into the next round's reference;
  - an order statistic (median, trimmed mean), which holds every update anyway: at the close,
    every update is judged against all of them (screen_batch), and the admitted ones are
    handed to the rule. The screen keeps its own copy of each update meanwhile.
A term of the rule is judged only once `min_reference` updates are at hand, so a round of two
updates is not screened by direction. `screen` must come first; TFF has no counterpart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jurisfed.aggregation.diagnostics import Diagnosis, OutlierRule, UpdateScreen, screen_batch
from jurisfed.aggregation.process import (
    Accumulation,
    AggregationFactory,
    AggregationProcess,
    Output,
    RuleState,
    Wrapper,
    check_weight,
)
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.tensors import FloatArray, ModelSpec, Weights

_NORM_KEY = "norm.{:04d}"


@dataclass(frozen=True)
class Screen(Wrapper):
    name: ClassVar[str] = "screen"
    max_norm_ratio: float = 4.0
    min_cosine: float = 0.0
    min_reference: float = 3.0

    def __post_init__(self) -> None:
        if self.min_reference != int(self.min_reference):
            raise InvalidInput(f"screen: min_reference must be a whole number, got {self.min_reference}")
        self.outlier_rule()  # validates the settings
        inner: AggregationFactory | None = self.inner
        while inner is not None:
            if isinstance(inner, Screen):
                raise InvalidInput("screen may appear once in a rule")
            inner = getattr(inner, "inner", None)

    def outlier_rule(self) -> OutlierRule:
        return OutlierRule(self.max_norm_ratio, self.min_cosine, int(self.min_reference))

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _ScreenProcess(spec, self, self.inner.create(spec, rng=rng))

    def to_tff(self) -> Any:
        raise NotImplementedError("TFF has no outlier screen; its rule is tested against diagnostics.py")


def terminal(factory: AggregationFactory) -> AggregationFactory:
    """The rule at the end of `factory`'s chain (mean, median, dp_gaussian, ...)."""
    while isinstance(factory, Wrapper):
        factory = factory.inner
    return factory


def screened(factory: AggregationFactory) -> bool:
    return isinstance(factory, Screen)


class _ScreenProcess(AggregationProcess):
    def __init__(self, spec: ModelSpec, rule: Screen, inner: AggregationProcess) -> None:
        super().__init__(spec)
        self.rule = rule
        self.inner = inner
        self.batch = terminal(rule.inner).keeps_every_update

    def initialize(self) -> RuleState:
        return RuleState(inner=self.inner.initialize())

    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        if state.inner is None:
            raise InvalidInput("state of screen lacks its inner rule's state")
        if self.batch:
            return _BatchScreen(self, state.inner)
        norms = [value for _, value in sorted(state.values)]
        return _StreamScreen(self, state.inner, norms, expected_updates)


class _StreamScreen(Accumulation):
    """Judges each update as it arrives; only admitted updates reach the inner rule."""

    def __init__(
        self, process: _ScreenProcess, inner_state: RuleState, norms: list[float], expected: int
    ) -> None:
        self._process = process
        self._screen = UpdateScreen(process.spec, process.rule.outlier_rule(), norms=norms)
        self._inner = process.inner.start(inner_state, expected_updates=expected)
        self._diagnoses: list[Diagnosis] = []

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        self.add_from(f"update {len(self._diagnoses) + 1}", update, weight)

    def add_from(self, sender: str, update: Mapping[str, FloatArray], weight: float) -> None:
        check_weight(weight)
        diagnosis = self._screen.inspect(sender, update)
        if not diagnosis.outlier:
            self._inner.add(update, weight)  # a malformed update raises here, before it is admitted
            self._screen.admit(update)
        self._diagnoses.append(diagnosis)

    @property
    def diagnoses(self) -> tuple[Diagnosis, ...]:
        return tuple(self._diagnoses)

    def finish(self) -> Output:
        if not self._screen.admitted:
            raise WrongState(f"every one of the {len(self._diagnoses)} update(s) was an outlier")
        inner = self._inner.finish()
        norms = self._screen.norms
        state = RuleState(tuple((_NORM_KEY.format(i), n) for i, n in enumerate(norms)), inner.state)
        return Output(state, inner.result, _measurements(inner, self._diagnoses))


class _BatchScreen(Accumulation):
    """Holds a copy of every update; at the close judges them together and folds the admitted."""

    def __init__(self, process: _ScreenProcess, inner_state: RuleState) -> None:
        self._process = process
        self._inner_state = inner_state
        self._held: dict[str, tuple[Weights, float]] = {}
        self._diagnoses: tuple[Diagnosis, ...] = ()

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        self.add_from(f"update {len(self._held) + 1}", update, weight)

    def add_from(self, sender: str, update: Mapping[str, FloatArray], weight: float) -> None:
        self._process.spec.check(update)
        check_weight(weight)
        if sender in self._held:
            raise InvalidInput(f"{sender} already sent an update")
        copy = {name: np.array(values, dtype=np.float32) for name, values in update.items()}
        self._held[sender] = (copy, weight)

    @property
    def diagnoses(self) -> tuple[Diagnosis, ...]:
        return self._diagnoses

    def finish(self) -> Output:
        if not self._held:
            raise WrongState("no update has been added, so there is nothing to aggregate")
        rule = self._process.rule.outlier_rule()
        judged = screen_batch(self._process.spec, {s: u for s, (u, _) in self._held.items()}, rule)
        self._diagnoses = tuple(judged[sender] for sender in self._held)
        admitted = [self._held[d.sender] for d in self._diagnoses if not d.outlier]
        if not admitted:
            raise WrongState(f"every one of the {len(self._held)} update(s) was an outlier")
        inner = self._process.inner.start(self._inner_state, expected_updates=len(admitted))
        for update, weight in admitted:
            inner.add(update, weight)
        self._held.clear()
        output = inner.finish()
        return Output(RuleState(inner=output.state), output.result, _measurements(output, self._diagnoses))


def _measurements(inner: Output, diagnoses: list[Diagnosis] | tuple[Diagnosis, ...]) -> dict[str, Any]:
    finite = [d.score for d in diagnoses if d.score < float("inf")]
    return {
        "screening": inner.measurements,
        "screened_count": len(diagnoses),
        "excluded_count": sum(d.outlier for d in diagnoses),
        "max_score": max(finite, default=0.0),
    }
