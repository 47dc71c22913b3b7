"""Interpolation personalization: the mixture chosen on validation is never worse than the global model."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.errors import InvalidInput
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.personalization.interpolation import interpolate, personalize

ARCH = Mlp(input_dim=4, hidden_units=(), num_classes=2)


def _weights(kernel: list[list[float]]) -> dict[str, np.ndarray]:
    return {"head/kernel": np.array(kernel, dtype=np.float32), "head/bias": np.zeros(2, dtype=np.float32)}


# Label 1 exactly when the first feature is positive.
FEATURES = np.array([[1, 0, 0, 0], [-1, 0, 0, 0], [2, 1, 0, 0], [-2, 1, 0, 0]], dtype=np.float32)
VALIDATION = LabelledExamples(FEATURES, np.array([1, 0, 1, 0], dtype=np.int64))
RIGHT = _weights([[-1, 1], [0, 0], [0, 0], [0, 0]])
WRONG = _weights([[1, -1], [0, 0], [0, 0], [0, 0]])


def test_interpolate_mixes_tensor_by_tensor() -> None:
    mixed = interpolate(RIGHT, WRONG, 0.25)
    np.testing.assert_allclose(mixed["head/kernel"][0], [0.25 * -1 + 0.75 * 1, 0.25 * 1 + 0.75 * -1])
    assert mixed["head/kernel"].dtype == np.float32


def test_a_better_jurisdiction_model_is_chosen() -> None:
    chosen = personalize(ARCH, WRONG, RIGHT, VALIDATION)
    assert chosen.choice.global_validation_accuracy == 0.0
    assert chosen.choice.validation_accuracy == 1.0
    assert chosen.choice.mixing_weight > 0.5


def test_a_worse_jurisdiction_model_leaves_the_global_model_served() -> None:
    chosen = personalize(ARCH, RIGHT, WRONG, VALIDATION)
    assert chosen.choice.mixing_weight == 0.0
    for name, values in chosen.weights.items():
        np.testing.assert_array_equal(values, RIGHT[name])


def test_ties_go_to_the_global_side() -> None:
    chosen = personalize(ARCH, RIGHT, RIGHT, VALIDATION, grid=(0.0, 0.5, 1.0))
    assert chosen.choice.mixing_weight == 0.0
    assert [a for a, _ in chosen.choice.accuracy_by_weight] == [0.0, 0.5, 1.0]


def test_a_grid_without_zero_is_refused() -> None:
    with pytest.raises(InvalidInput, match="include 0"):
        personalize(ARCH, RIGHT, WRONG, VALIDATION, grid=(0.5, 1.0))


def test_a_gain_below_the_margin_keeps_the_global_model() -> None:
    half_right = _weights([[0, 0], [0, 1], [0, 0], [0, 0]])  # right on the two examples with x1 = 1
    assert personalize(ARCH, WRONG, half_right, VALIDATION).choice.mixing_weight > 0
    kept = personalize(ARCH, WRONG, RIGHT, VALIDATION, min_gain=0.99)
    assert kept.choice.mixing_weight > 0  # a gain of 1.0 clears a 0.99 margin
    held = personalize(ARCH, half_right, RIGHT, VALIDATION, min_gain=0.6)
    assert held.choice.mixing_weight == 0.0  # 0.5 -> 1.0 is a gain of 0.5 only
