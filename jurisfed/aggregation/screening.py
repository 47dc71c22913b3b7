"""`screen(...)`: the poisoning screen as the outermost stage of a rule, so a contract switches it on.

    screen(max_norm_ratio=4.0, min_cosine=0.0) > trimmed_mean(trim=0.2)
    screen() > clip(norm=5.0) > mean
    screen(max_loss_increase=0.5) > mean

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

`max_loss_increase` (nats; unset: no loss term) judges each update by the probe loss of the
round's base plus the update, on labelled examples the tier holds: the tier hands a ProbeLoss to
`ScreenProcess.start` (intake.py, from OpenRound.start). A tier without examples runs the rule
all the same, without the term: each diagnosis notes that the loss was not evaluated, the
measurements hold `probe_loss_evaluated` 0, and the tier logs it when the round opens. Unset,
the argument is left out of the canonical text, so rules without it keep their text and the
state kept under it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from jurisfed.aggregation.diagnostics import (
    NOT_EVALUATED,
    Diagnosis,
    OutlierRule,
    ProbeLoss,
    UpdateScreen,
    screen_batch,
)
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

log = logging.getLogger("jurisfed.aggregation")

_NORM_KEY = "norm.{:04d}"


@dataclass(frozen=True)
class Screen(Wrapper):
    name: ClassVar[str] = "screen"
    max_norm_ratio: float = 4.0
    min_cosine: float = 0.0
    min_reference: float = 3.0
    max_loss_increase: float | None = None  # nats above the median probe loss; None: no loss term

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
        return OutlierRule(
            self.max_norm_ratio,
            self.min_cosine,
            int(self.min_reference),
            max_loss_increase=self.max_loss_increase,
        )

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> ScreenProcess:
        return ScreenProcess(spec, self, self.inner.create(spec, rng=rng))

    def __str__(self) -> str:
        """Every argument spelled out, as for any rule, but an unset max_loss_increase left out."""
        settings = [
            f"{f.name}={float(value)!r}"
            for f in fields(self)
            if f.name != "inner" and (value := getattr(self, f.name)) is not None
        ]
        return f"{self.name}({', '.join(settings)}) > {self.inner}"

    def to_tff(self) -> Any:
        raise NotImplementedError("TFF has no outlier screen; its rule is tested against diagnostics.py")


def terminal(factory: AggregationFactory) -> AggregationFactory:
    """The rule at the end of `factory`'s chain (mean, median, dp_gaussian, ...)."""
    while isinstance(factory, Wrapper):
        factory = factory.inner
    return factory


def screened(factory: AggregationFactory) -> bool:
    return isinstance(factory, Screen)


class ScreenProcess(AggregationProcess):
    def __init__(self, spec: ModelSpec, rule: Screen, inner: AggregationProcess) -> None:
        super().__init__(spec)
        self.rule = rule
        self.inner = inner
        self.batch = terminal(rule.inner).keeps_every_update

    def initialize(self) -> RuleState:
        return RuleState(inner=self.inner.initialize())

    def start(
        self, state: RuleState, *, expected_updates: int = 0, probe: ProbeLoss | None = None
    ) -> Accumulation:
        """`probe`: the loss of this round's base plus an update on the tier's examples (None: the
        tier holds none, and the loss term is left out)."""
        if state.inner is None:
            raise InvalidInput("state of screen lacks its inner rule's state")
        if self.rule.max_loss_increase is not None and probe is None:
            log.warning("screen: %s", NOT_EVALUATED, extra={"rule": str(self.rule)})
        if self.batch:
            return _BatchScreen(self, state.inner, probe)
        norms = [value for _, value in sorted(state.values)]
        return _StreamScreen(self, state.inner, norms, expected_updates, probe)


class _StreamScreen(Accumulation):
    """Judges each update as it arrives; only admitted updates reach the inner rule."""

    def __init__(
        self,
        process: ScreenProcess,
        inner_state: RuleState,
        norms: list[float],
        expected: int,
        probe: ProbeLoss | None,
    ) -> None:
        self._process = process
        self._probe = probe
        self._screen = UpdateScreen(process.spec, process.rule.outlier_rule(), norms=norms, probe=probe)
        self._inner = process.inner.start(inner_state, expected_updates=expected)
        self._diagnoses: list[Diagnosis] = []

    def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
        self.add_from(f"update {len(self._diagnoses) + 1}", update, weight)

    def add_from(self, sender: str, update: Mapping[str, FloatArray], weight: float) -> None:
        check_weight(weight)
        diagnosis = self._screen.inspect(sender, update)
        if not diagnosis.outlier:
            self._inner.add(update, weight)  # a malformed update raises here, before it is admitted
            self._screen.admit(update, probe_loss=diagnosis.probe_loss)
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
        return Output(state, inner.result, _measurements(self._process, inner, self._diagnoses, self._probe))


class _BatchScreen(Accumulation):
    """Holds a copy of every update; at the close judges them together and folds the admitted."""

    def __init__(self, process: ScreenProcess, inner_state: RuleState, probe: ProbeLoss | None) -> None:
        self._process = process
        self._inner_state = inner_state
        self._probe = probe
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
        held = {sender: update for sender, (update, _) in self._held.items()}
        judged = screen_batch(self._process.spec, held, rule, probe=self._probe)
        self._diagnoses = tuple(judged[sender] for sender in self._held)
        admitted = [self._held[d.sender] for d in self._diagnoses if not d.outlier]
        if not admitted:
            raise WrongState(f"every one of the {len(self._held)} update(s) was an outlier")
        inner = self._process.inner.start(self._inner_state, expected_updates=len(admitted))
        for update, weight in admitted:
            inner.add(update, weight)
        self._held.clear()
        output = inner.finish()
        measurements = _measurements(self._process, output, self._diagnoses, self._probe)
        return Output(RuleState(inner=output.state), output.result, measurements)


def _measurements(
    process: ScreenProcess,
    inner: Output,
    diagnoses: list[Diagnosis] | tuple[Diagnosis, ...],
    probe: ProbeLoss | None,
) -> dict[str, Any]:
    finite = [d.score for d in diagnoses if d.score < float("inf")]
    measurements: dict[str, Any] = {
        "screening": inner.measurements,
        "screened_count": len(diagnoses),
        "excluded_count": sum(d.outlier for d in diagnoses),
        "max_score": max(finite, default=0.0),
    }
    if process.rule.max_loss_increase is not None:  # a rule without the term measures what it did
        measurements["probe_loss_evaluated"] = 0.0 if probe is None else 1.0
        measurements["probe_examples"] = 0.0 if probe is None else float(probe.size)
    return measurements
