"""Stochastic int8 quantization: unbiased, within one step of every value, exact at zero."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.compression.int8 import LEVELS, Int8Array, dequantize, quantize
from jurisfed.tensors import FloatArray


def _values(seed: int, shape: tuple[int, ...] = (1000,), spread: float = 3.0) -> FloatArray:
    return (np.random.default_rng(seed).standard_normal(shape) * spread).astype(np.float32)


def _largest_error_in_steps(values: FloatArray, quantized: Int8Array, scale: float) -> float:
    """max |q * scale - x| / scale, in float64, where int8 times a float32 scale is exact."""
    return float(np.max(np.abs(quantized.astype(np.float64) * scale - values.astype(np.float64)))) / scale


def test_output_is_int8_within_plus_minus_127_and_scale_is_the_peak_over_127() -> None:
    values = _values(0, (31, 17))
    quantized, scale = quantize(values, np.random.default_rng(1))

    assert quantized.dtype == np.int8
    assert quantized.shape == values.shape
    assert quantized.min() >= -LEVELS
    assert quantized.max() <= LEVELS
    assert scale == pytest.approx(float(np.max(np.abs(values))) / 127, rel=1e-6)


def test_dequantize_gives_float32_of_the_same_shape() -> None:
    values = _values(2, (4, 5, 6))
    restored = dequantize(*quantize(values, np.random.default_rng(3)))
    assert restored.dtype == np.float32
    assert restored.shape == values.shape


def test_is_unbiased_over_many_draws() -> None:
    values = _values(4, (500,))
    rng = np.random.default_rng(5)
    draws = 2000
    total = np.zeros(values.shape, dtype=np.float64)
    for _ in range(draws):
        quantized, scale = quantize(values, rng)
        total += dequantize(quantized, scale)
    mean_error_in_steps = (total / draws - values) / scale

    # One draw errs by up to a step (std <= 0.5 step); the mean of 2000 by ~0.5/sqrt(2000) = 0.011.
    assert abs(float(np.mean(mean_error_in_steps))) < 0.005
    assert float(np.max(np.abs(mean_error_in_steps))) < 0.06


def test_every_value_is_strictly_within_one_step() -> None:
    values = _values(6, (200_000,))
    quantized, scale = quantize(values, np.random.default_rng(7))
    assert _largest_error_in_steps(values, quantized, scale) < 1.0


def test_values_on_the_grid_and_at_plus_minus_the_peak_stay_strictly_within_one_step() -> None:
    # Values that are exact multiples of the step, ±peak included, repeated so that even a
    # random draw within 2**-18 of 1.0 (which float32 addition rounds up to the next level)
    # occurs many times.
    grid = np.arange(-LEVELS, LEVELS + 1, dtype=np.float32) * np.float32(0.5)
    values = np.tile(grid, 40_000)
    quantized, scale = quantize(values, np.random.default_rng(8))

    assert scale == pytest.approx(0.5)
    assert _largest_error_in_steps(values, quantized, scale) < 1.0
    assert set(np.unique(quantized[values == values.max()])) == {LEVELS}


@pytest.mark.parametrize("shape", [(0,), (3, 0), (5,), (2, 3)])
def test_all_zero_and_empty_tensors_quantize_to_zeros_with_scale_zero(shape: tuple[int, ...]) -> None:
    quantized, scale = quantize(np.zeros(shape, dtype=np.float32), np.random.default_rng(9))

    assert scale == 0.0
    assert quantized.dtype == np.int8
    assert quantized.shape == shape
    assert not quantized.any()
    np.testing.assert_array_equal(dequantize(quantized, scale), np.zeros(shape, dtype=np.float32))


def test_zeros_inside_a_tensor_stay_exactly_zero() -> None:
    values = _values(10, (10_000,))
    values[::3] = 0.0
    quantized, _ = quantize(values, np.random.default_rng(11))
    assert not quantized[::3].any()


def test_the_same_seed_gives_the_same_quantization() -> None:
    values = _values(12)
    first = quantize(values, np.random.default_rng(13))
    second = quantize(values, np.random.default_rng(13))
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
