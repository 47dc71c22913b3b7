"""Per-update diagnostics: norm, cosine to the running aggregate, and an outlier score.

The rule (OutlierRule), which an operator can read and tune:

  norm_ratio = norm / median of the reference norms
  cosine     = cos(update, reference direction)
  score      = max(norm_ratio / max_norm_ratio, (1 - cosine) / (1 - min_cosine))

An update is an outlier when score > 1, that is when its norm is more than `max_norm_ratio`
times the median (a scaled, model-replacement update), or its direction is further than
`min_cosine` from the aggregate (a sign-flipped one), or it holds NaN or infinity (score
inf). A term is left out (taken as 0) until its reference holds `min_reference` updates: with
fewer, there is no majority to stand out from, and no update is judged on that term.

Two references, for the two ways a tier holds updates:
  - UpdateScreen, when updates are folded in as they arrive (the regional's mean): the
    reference direction is the mean of the unit vectors of the updates admitted so far, plus
    the previous round's aggregate direction counted as `min_reference` of them; the norms
    are those admitted in this and recent rounds. Each admitted update counts once whatever
    its size, so a huge update admitted early cannot take the direction over. An outlier is
    not folded in, so the attacker never becomes the reference.
  - screen_batch, when all updates are at hand (median, trimmed mean, the global tier): the
    reference is their coordinate-wise median and the median of their norms; order-free.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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

    def __post_init__(self) -> None:
        if not self.max_norm_ratio > 1:
            raise InvalidInput(f"max_norm_ratio must exceed 1, got {self.max_norm_ratio}")
        if not -1 <= self.min_cosine < 1:
            raise InvalidInput(f"min_cosine must be in [-1, 1), got {self.min_cosine}")
        if self.min_reference < 1 or self.norm_history < self.min_reference:
            raise InvalidInput("min_reference must be at least 1 and norm_history at least min_reference")


@dataclass(frozen=True)
class Diagnosis:
    sender: str
    norm: float
    norm_ratio: float | None  # None: too few reference norms to judge
    cosine: float | None  # None: too few reference updates, or a zero update
    score: float  # > 1 means outlier
    reasons: tuple[str, ...]

    @property
    def outlier(self) -> bool:
        return self.score > 1.0

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "within the outlier rule"


class UpdateScreen:
    """Diagnoses updates as they arrive against the aggregate of those admitted before them."""

    def __init__(
        self,
        spec: ModelSpec,
        rule: OutlierRule | None = None,
        *,
        prior: Mapping[str, FloatArray] | None = None,
        norms: Sequence[float] = (),
    ) -> None:
        """`prior`: the previous round's aggregate; `norms`: norms admitted in earlier rounds."""
        self.spec = spec
        self.rule = rule or OutlierRule()
        self._norms: deque[float] = deque(norms, maxlen=self.rule.norm_history)
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
        return _diagnose(self.rule, sender, norm, reference_norm, cosine)

    def admit(self, update: Mapping[str, FloatArray]) -> None:
        """Fold an update that was not an outlier into the reference."""
        norm = _norm(update)
        if not math.isfinite(norm):
            raise InvalidInput("an update holding NaN or infinity cannot be admitted")
        self._norms.append(norm)
        self._admitted += 1
        if norm > 0:
            self._fold(update, weight=1.0)

    def screen(self, sender: str, update: Mapping[str, FloatArray]) -> Diagnosis:
        """Inspect, and admit unless it is an outlier."""
        diagnosis = self.inspect(sender, update)
        if not diagnosis.outlier:
            self.admit(update)
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
    spec: ModelSpec, updates: Mapping[str, Mapping[str, FloatArray]], rule: OutlierRule | None = None
) -> dict[str, Diagnosis]:
    """Diagnose every update against all of them: their coordinate-wise median and median norm."""
    rule = rule or OutlierRule()
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
    diagnoses = {}
    for sender, update in updates.items():
        norm = norms[sender]
        cosine = None
        if judged and math.isfinite(norm) and norm > 0 and median_norm > 0:
            cosine = _dot(update, median) / (norm * median_norm)
        diagnoses[sender] = _diagnose(rule, sender, norm, reference_norm, cosine)
    return diagnoses


def _diagnose(
    rule: OutlierRule, sender: str, norm: float, reference_norm: float | None, cosine: float | None
) -> Diagnosis:
    if not math.isfinite(norm):
        return Diagnosis(sender, norm, None, None, math.inf, ("holds NaN or infinity",))
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
    return Diagnosis(sender, norm, ratio, cosine, max(norm_term, direction_term), tuple(reasons))


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
