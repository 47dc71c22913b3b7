"""Interpolation personalization (APFL / Ditto style), with the mixing weight chosen on validation.

The regional holds two models: the global model w_g it received, and its jurisdiction's own
model w_j (for instance w_g plus its silos' mean update, trained on the jurisdiction's data
only). It serves its silos

    w = a * w_j + (1 - a) * w_g

with `a` the grid value of highest accuracy on the regional's own validation split. The grid
always holds a = 0 and ties go to the smaller weight, so on validation the served model is
never worse than the global one, and it equals the global model when mixing does not help.
A small validation split is noisy: with `min_gain` a mixture is adopted only when it beats
the global model on validation by at least that much accuracy (e.g. 0.02: two points), so
a lucky example or two does not move a jurisdiction off the global model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jurisfed.errors import InvalidInput
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.tensors import FloatArray, Weights

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.1 * step, 1) for step in range(11))


@dataclass(frozen=True)
class MixingChoice:
    mixing_weight: float  # a: the jurisdiction model's share
    validation_accuracy: float  # of the served mixture
    global_validation_accuracy: float  # of the global model alone (a = 0)
    accuracy_by_weight: tuple[tuple[float, float], ...]  # (a, validation accuracy) over the grid


@dataclass(frozen=True)
class Personalized:
    weights: Weights
    choice: MixingChoice


def interpolate(
    jurisdiction: Mapping[str, FloatArray], global_: Mapping[str, FloatArray], mixing_weight: float
) -> Weights:
    """a * jurisdiction + (1 - a) * global, tensor by tensor, in float32."""
    if sorted(jurisdiction) != sorted(global_):
        raise InvalidInput(f"tensors {sorted(jurisdiction)} and {sorted(global_)} differ")
    a = np.float32(mixing_weight)
    return {
        name: (a * jurisdiction[name] + (np.float32(1) - a) * values).astype(np.float32)
        for name, values in global_.items()
    }


def personalize(
    arch: Mlp,
    global_weights: Mapping[str, FloatArray],
    jurisdiction_weights: Mapping[str, FloatArray],
    validation: LabelledExamples,
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    min_gain: float = 0.0,
) -> Personalized:
    """The mixture of highest validation accuracy over `grid` (which must include 0), or the
    global model when no mixture beats it on validation by `min_gain`."""
    if 0.0 not in grid or not all(0.0 <= a <= 1.0 for a in grid):
        raise InvalidInput(f"the mixing grid must lie in [0, 1] and include 0, got {list(grid)}")
    if not 0.0 <= min_gain < 1.0:
        raise InvalidInput(f"min_gain must be in [0, 1), got {min_gain}")
    scored = []
    for a in sorted(set(grid)):
        mixture = interpolate(jurisdiction_weights, global_weights, a)
        scored.append((a, arch.accuracy(mixture, validation.features, validation.labels), mixture))
    best_a, best_accuracy, best = max(scored, key=lambda item: (item[1], -item[0]))
    if best_accuracy < scored[0][1] + min_gain:
        best_a, best_accuracy, best = scored[0]
    choice = MixingChoice(
        mixing_weight=best_a,
        validation_accuracy=best_accuracy,
        global_validation_accuracy=scored[0][1],
        accuracy_by_weight=tuple((a, accuracy) for a, accuracy, _ in scored),
    )
    return Personalized(best, choice)
