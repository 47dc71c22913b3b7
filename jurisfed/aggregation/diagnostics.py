"""Per-update diagnostics: norm, cosine to the running aggregate, loss on a probe, an outlier score.

The rule (OutlierRule), which an operator can read and tune:

  norm_ratio    = norm / median of the reference norms
  cosine        = cos(update, reference direction)
  loss_increase = probe loss of (round base + update) - median probe loss of the reference
  score         = max(norm_ratio / max_norm_ratio, (1 - cosine) / (1 - min_cosine),
                      loss_increase / max_loss_increase)

An update is an outlier when score > 1, that is when its norm is more than `max_norm_ratio`
times the median (a scaled, model-replacement update), or its direction is further than
`min_cosine` from the aggregate (a sign-flipped one), or the model it makes is worse on the
tier's own labelled examples by more than `max_loss_increase` nats of cross-entropy than the
typical update's (a label-flipped one, whose norm and direction look ordinary), or it holds NaN
or infinity (score inf). A term is left out (taken as 0) until its reference holds
`min_reference` updates: with fewer, there is no majority to stand out from, and no update is
judged on that term. The loss term is judged only when the rule sets `max_loss_increase` and
the tier hands the screen a ProbeLoss (it holds probe or validation examples that fit the
model); otherwise it is left out, and the diagnosis says so (`notes`).

Two references, for the two ways a tier holds updates:
  - UpdateScreen, when updates are folded in as they arrive (the regional's mean): the
    reference direction is the mean of the unit vectors of the updates admitted so far, plus
    the previous round's aggregate direction counted as `min_reference` of them; the norms
    are those admitted in this and recent rounds; the probe losses are those of the updates
    admitted in this round (a loss depends on the round's base, so earlier rounds' do not
    count). Each admitted update counts once whatever its size, so a huge update admitted
    early cannot take the direction over. An outlier is not folded in, so the attacker never
    becomes the reference.
  - screen_batch, when all updates are at hand (median, trimmed mean, the global tier): the
    reference is their coordinate-wise median, the median of their norms and the median of
    their probe losses; order-free.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jurisfed.aggregation.robust import coordinate_median
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, Weights


@dataclass(frozen=True)
class OutlierRule:
    max_norm_ratio: float = 4.0  # norm above this many times the median norm
    min_cosine: float = 0.0  # cosine to the aggregate below this (0: points away from it)
    min_reference: int = 3  # reference updates needed before a term is judged
    norm_history: int = 64  # admitted norms remembered across rounds (UpdateScreen)
    max_loss_increase: float | None = None  # nats of probe loss above the median; None: not judged

    def __post_init__(self) -> None:
        if not self.max_norm_ratio > 1:
            raise InvalidInput(f"max_norm_ratio must exceed 1, got {self.max_norm_ratio}")
        if not -1 <= self.min_cosine < 1:
            raise InvalidInput(f"min_cosine must be in [-1, 1), got {self.min_cosine}")
        if self.min_reference < 1 or self.norm_history < self.min_reference:
            raise InvalidInput("min_reference must be at least 1 and norm_history at least min_reference")
        if self.max_loss_increase is not None and not 0 < self.max_loss_increase < math.inf:
            raise InvalidInput(
                f"max_loss_increase must be a positive number of nats, got {self.max_loss_increase}"
            )


class ProbeLoss(Protocol):
    """The loss, on labelled examples the tier holds, of the round's base model plus an update.

    The tier builds one when a round opens (jurisfed.modeling.evaluation.MlpProbe) and hands it
    to the screen; the aggregation package never sees the examples or the architecture."""

    @property
    def size(self) -> int:
        """How many examples the loss is the mean over."""

    def loss(self, update: Mapping[str, FloatArray]) -> float:
        """Mean cross-entropy (nats) of base + `update`; NaN or inf when it overflows."""


NOT_EVALUATED = "probe loss not evaluated: this tier holds no probe examples that fit the model"


@dataclass(frozen=True)
class Diagnosis:
    sender: str
    norm: float
    norm_ratio: float | None  # None: too few reference norms to judge
    cosine: float | None  # None: too few reference updates, or a zero update
    score: float  # > 1 means outlier
    reasons: tuple[str, ...]
    probe_loss: float | None = None  # of base + update; None: the loss term was not evaluated
    reference_loss: float | None = None  # median probe loss of the reference; None: not judged
    notes: tuple[str, ...] = ()  # terms the rule sets that could not be evaluated, and why

    @property
    def outlier(self) -> bool:
        return self.score > 1.0

    @property
    def reason(self) -> str:
        text = "; ".join(self.reasons) if self.reasons else "within the outlier rule"
        return f"{text} ({'; '.join(self.notes)})" if self.notes else text


class UpdateScreen:
    """Diagnoses updates as they arrive against the aggregate of those admitted before them."""

    def __init__(
        self,
        spec: ModelSpec,
        rule: OutlierRule | None = None,
        *,
        prior: Mapping[str, FloatArray] | None = None,
        norms: Sequence[float] = (),
        probe: ProbeLoss | None = None,
    ) -> None:
        """`prior`: the previous round's aggregate; `norms`: norms admitted in earlier rounds;
        `probe`: the loss of this round's base plus an update, where the tier holds examples."""
        self.spec = spec
        self.rule = rule or OutlierRule()
        self.probe = probe if self.rule.max_loss_increase is not None else None
        self._norms: deque[float] = deque(norms, maxlen=self.rule.norm_history)
        self._losses: list[float] = []  # probe losses of the updates admitted this round
        self._direction: Weights = spec.zeros()
        self._votes = 0
        self._admitted = 0
        if prior is not None:
            self._fold(prior, weight=float(self.rule.min_reference))

    @property
    def norms(self) -> tuple[float, ...]:
        """Norms to carry into the next round's screen (persist them across restarts)."""
        return tuple(self._norms)

    @property
    def admitted(self) -> int:
        return self._admitted

    def inspect(self, sender: str, update: Mapping[str, FloatArray]) -> Diagnosis:
        """Diagnose without changing the reference."""
        self.spec.check(update)
        norm = _norm(update)
        reference_norm = (
            statistics.median(self._norms) if len(self._norms) >= self.rule.min_reference else None
        )
        cosine = None
        if self._votes >= self.rule.min_reference and math.isfinite(norm) and norm > 0:
            length = _norm(self._direction)
            cosine = _dot(update, self._direction) / (norm * length) if length > 0 else None
        loss = self.probe.loss(update) if self.probe is not None and math.isfinite(norm) else None
        reference_loss = (
            statistics.median(self._losses) if len(self._losses) >= self.rule.min_reference else None
        )
        return _diagnose(self.rule, sender, norm, reference_norm, cosine, loss, reference_loss, self.probe)

    def admit(self, update: Mapping[str, FloatArray], *, probe_loss: float | None = None) -> None:
        """Fold an update that was not an outlier into the reference (`probe_loss`: its loss, as
        `inspect` found it; computed again when not given)."""
        norm = _norm(update)
        if not math.isfinite(norm):
            raise InvalidInput("an update holding NaN or infinity cannot be admitted")
        self._norms.append(norm)
        self._admitted += 1
        if self.probe is not None:
            loss = probe_loss if probe_loss is not None else self.probe.loss(update)
            if math.isfinite(loss):
                self._losses.append(loss)
        if norm > 0:
            self._fold(update, weight=1.0)

    def screen(self, sender: str, update: Mapping[str, FloatArray]) -> Diagnosis:
        """Inspect, and admit unless it is an outlier."""
        diagnosis = self.inspect(sender, update)
        if not diagnosis.outlier:
            self.admit(update, probe_loss=diagnosis.probe_loss)
        return diagnosis

    def _fold(self, update: Mapping[str, FloatArray], weight: float) -> None:
        """Add `weight` times the update's unit vector to the reference direction."""
        norm = _norm(update)
        if not (math.isfinite(norm) and norm > 0):
            return
        scale = np.float32(weight / norm)
        for name, direction in self._direction.items():
            np.add(direction, np.asarray(update[name], dtype=np.float32) * scale, out=direction)
        self._votes += int(weight)


def screen_batch(
    spec: ModelSpec,
    updates: Mapping[str, Mapping[str, FloatArray]],
    rule: OutlierRule | None = None,
    *,
    probe: ProbeLoss | None = None,
) -> dict[str, Diagnosis]:
    """Diagnose every update against all of them: their coordinate-wise median, median norm and
    (with a `probe`, when the rule sets max_loss_increase) median probe loss."""
    rule = rule or OutlierRule()
    probe = probe if rule.max_loss_increase is not None else None
    for update in updates.values():
        spec.check(update)
    norms = {sender: _norm(update) for sender, update in updates.items()}
    finite = {sender: update for sender, update in updates.items() if math.isfinite(norms[sender])}
    judged = len(finite) >= rule.min_reference
    reference_norm = statistics.median(norms[s] for s in finite) if judged else None
    median: Weights = {}
    if judged:
        median = {t.name: coordinate_median([u[t.name] for u in finite.values()]) for t in spec.tensors}
    median_norm = _norm(median) if judged else 0.0
    losses = {sender: probe.loss(update) for sender, update in finite.items()} if probe is not None else {}
    finite_losses = [loss for loss in losses.values() if math.isfinite(loss)]
    reference_loss = statistics.median(finite_losses) if len(finite_losses) >= rule.min_reference else None
    diagnoses = {}
    for sender, update in updates.items():
        norm = norms[sender]
        cosine = None
        if judged and math.isfinite(norm) and norm > 0 and median_norm > 0:
            cosine = _dot(update, median) / (norm * median_norm)
        loss = losses.get(sender)
        diagnoses[sender] = _diagnose(rule, sender, norm, reference_norm, cosine, loss, reference_loss, probe)
    return diagnoses


def _diagnose(
    rule: OutlierRule,
    sender: str,
    norm: float,
    reference_norm: float | None,
    cosine: float | None,
    loss: float | None = None,
    reference_loss: float | None = None,
    probe: ProbeLoss | None = None,
) -> Diagnosis:
    notes = (NOT_EVALUATED,) if rule.max_loss_increase is not None and probe is None else ()
    if not math.isfinite(norm):
        return Diagnosis(sender, norm, None, None, math.inf, ("holds NaN or infinity",), notes=notes)
    ratio = norm / reference_norm if reference_norm else None
    reasons = []
    norm_term = ratio / rule.max_norm_ratio if ratio is not None else 0.0
    if norm_term > 1:
        reasons.append(
            f"norm {norm:.4g} is {ratio:.3g} times the median {reference_norm:.4g} "
            f"(limit {rule.max_norm_ratio:g})"
        )
    direction_term = (1 - cosine) / (1 - rule.min_cosine) if cosine is not None else 0.0
    if direction_term > 1:
        reasons.append(f"cosine {cosine:.3f} to the aggregate is below {rule.min_cosine:g}")
    loss_term = 0.0
    if rule.max_loss_increase is not None and loss is not None and reference_loss is not None:
        size = probe.size if probe is not None else 0
        if not math.isfinite(loss):
            loss_term = math.inf
            reasons.append(f"probe loss on {size} examples is not a finite number (the model overflows)")
        else:
            loss_term = (loss - reference_loss) / rule.max_loss_increase
            if loss_term > 1:
                reasons.append(
                    f"probe loss {loss:.4f} on {size} examples is {loss - reference_loss:.4f} nats above "
                    f"the median {reference_loss:.4f} (limit {rule.max_loss_increase:g})"
                )
    score = max(norm_term, direction_term, loss_term)
    return Diagnosis(sender, norm, ratio, cosine, score, tuple(reasons), loss, reference_loss, notes)


def _norm(update: Mapping[str, FloatArray]) -> float:
    return math.sqrt(_dot(update, update))


def _dot(a: Mapping[str, FloatArray], b: Mapping[str, FloatArray]) -> float:
    """Sum over tensors of float32 dot products (BLAS; NaN, infinity or overflow give non-finite)."""
    total = 0.0
    for name, values in a.items():
        left = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        right = np.ascontiguousarray(b[name], dtype=np.float32).reshape(-1)
        total += float(np.dot(left, right))
    return total
