"""int8 with one scale per block: within one step of each block's own scale, and unbiased."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.compression.int8 import (
    LEVELS,
    block_count,
    dequantize_blocks,
    quantize,
    quantize_blocks,
)
from jurisfed.tensors import FloatArray


def _values(seed: int, size: int) -> FloatArray:
    """Blocks of very different magnitudes: where a per-tensor scale loses the small ones."""
    rng = np.random.default_rng(seed)
    magnitudes = np.repeat(10.0 ** rng.integers(-6, 3, size=block_count(size, 64)), 64)[:size]
    return (rng.standard_normal(size) * magnitudes).astype(np.float32)


def _steps(scales: FloatArray, block_size: int, size: int) -> FloatArray:
    return np.repeat(scales, block_size)[:size]


@pytest.mark.parametrize("block_size", [1, 7, 64, 256, 65536])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 100_003])
def test_every_value_is_within_one_step_of_its_blocks_scale(block_size: int, size: int) -> None:
    values = _values(size, size)

    quantized, scales = quantize_blocks(values, block_size, np.random.default_rng(1))

    assert quantized.dtype == np.int8
    assert quantized.shape == (size,)
    assert scales.shape == (block_count(size, block_size),)
    assert np.all(np.abs(quantized.astype(np.int32)) <= LEVELS)
    decoded = dequantize_blocks(quantized, scales, block_size)
    assert np.all(np.abs(decoded - values) < _steps(scales, block_size, size))


def test_each_scale_is_its_blocks_peak_over_127_and_the_last_block_may_be_shorter() -> None:
    values = _values(2, 1000)

    _, scales = quantize_blocks(values, 256, np.random.default_rng(2))

    peaks = [np.abs(values[start : start + 256]).max() for start in range(0, 1000, 256)]
    np.testing.assert_allclose(scales, np.array(peaks) / LEVELS, rtol=1e-6)


def test_values_on_a_level_and_at_plus_minus_the_peak_stay_strictly_within_one_step() -> None:
    # Exact multiples of each block's step, ±peak included, in 40 blocks of 65,280 values, so
    # that draws within 2**-18 of 1.0 (which float32 addition would round up to the next
    # level) occur about ten times.
    grid = np.tile(np.arange(-LEVELS, LEVELS + 1, dtype=np.float32), 256)
    steps = np.tile(np.array([0.5, 0.003], dtype=np.float32), 20)
    values = np.concatenate([grid * step for step in steps])

    quantized, scales = quantize_blocks(values, grid.size, np.random.default_rng(8))

    np.testing.assert_allclose(scales, steps, rtol=1e-6)
    decoded = dequantize_blocks(quantized, scales, grid.size)
    assert np.all(np.abs(decoded - values) < _steps(scales, grid.size, values.size))
    assert set(np.unique(quantized[values == values.max()])) == {LEVELS}


def test_quantization_is_unbiased_block_by_block() -> None:
    values = _values(3, 4096)
    rng = np.random.default_rng(4)
    draws = 2000

    total = np.zeros(values.size)
    for _ in range(draws):
        quantized, scales = quantize_blocks(values, 64, rng)
        total += dequantize_blocks(quantized, scales, 64)

    # Each draw errs by less than a step, with mean 0: the average of `draws` errs by a few
    # standard errors (at most step / 2 / sqrt(draws)) and no more, in every block alike.
    steps = _steps(quantize_blocks(values, 64, rng)[1], 64, values.size)
    assert np.all(np.abs(total / draws - values) <= 5 * steps / 2 / np.sqrt(draws))


def test_small_blocks_keep_their_precision_next_to_large_ones() -> None:
    values = _values(5, 64 * 100)
    rng = np.random.default_rng(5)

    blocked = dequantize_blocks(*quantize_blocks(values, 64, rng), 64)
    whole = quantize(values, rng)
    per_tensor = whole[0].astype(np.float32) * np.float32(whole[1])

    small = np.repeat(np.abs(values).reshape(100, 64).max(axis=1) < 1e-3, 64)
    assert np.max(np.abs(blocked - values)[small]) < 1e-3 / LEVELS
    assert np.count_nonzero(per_tensor[small]) < np.count_nonzero(small) / 100  # lost to rounding


def test_an_all_zero_block_has_scale_zero_and_stays_zero() -> None:
    values = np.concatenate([np.zeros(64, np.float32), np.ones(64, np.float32), np.zeros(10, np.float32)])

    quantized, scales = quantize_blocks(values, 64, np.random.default_rng(6))

    np.testing.assert_array_equal(scales, np.array([0.0, 1 / LEVELS, 0.0], np.float32))
    assert not quantized[:64].any()
    assert not quantized[128:].any()
    np.testing.assert_array_equal(dequantize_blocks(quantized, scales, 64)[64:128], np.ones(64, np.float32))


def test_quantize_draws_as_one_call_over_the_whole_tensor_would() -> None:
    # The piecewise loop must not change what a seed produces: seeded runs stay reproducible.
    values = np.random.default_rng(7).standard_normal((300, 1001)).astype(np.float32)

    quantized, scale = quantize(values, np.random.default_rng(9))

    scaled = values / np.float32(scale)
    levels = np.floor(scaled)
    levels += np.random.default_rng(9).random(values.shape, dtype=np.float32) < scaled - levels
    np.testing.assert_array_equal(quantized, np.clip(levels, -LEVELS, LEVELS).astype(np.int8))


@pytest.mark.parametrize("block_size", [0, -1, 65537])
def test_a_block_size_out_of_range_is_refused(block_size: int) -> None:
    with pytest.raises(ValueError, match="block_size must be from 1 to 65536"):
        quantize_blocks(np.ones(3, np.float32), block_size, np.random.default_rng())


def test_dequantizing_with_the_wrong_number_of_scales_is_refused() -> None:
    quantized, scales = quantize_blocks(np.ones(100, np.float32), 10, np.random.default_rng())

    with pytest.raises(ValueError, match="9 scales for 100 values in blocks of 10"):
        dequantize_blocks(quantized, scales[:9], 10)
