"""Coordinate-wise median and trimmed mean: equal to np.median and scipy's trim_mean, bounded memory."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import scipy.stats

from jurisfed.aggregation.robust import (
    BLOCK_BYTES,
    MAX_BLOCK_COORDINATES,
    NETWORK_MAX_UPDATES,
    UpdateStack,
    coordinate_median,
    extremes_network,
    sorting_network,
    trimmed_mean,
    trimmed_per_side,
)
from jurisfed.errors import InvalidInput

# Both ways of ordering a block (network up to NETWORK_MAX_UPDATES, sorted rows above), odd
# and even N, and one block boundary inside the (7, 3001) tensor for either path.
COUNTS = [1, 2, 3, 4, 5, 8, 10, 11, 16, 23, NETWORK_MAX_UPDATES, NETWORK_MAX_UPDATES + 1, 40, 64, 101]
SHAPE = (7, 3001)


def _updates(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Heavy tails and ties: what makes order statistics differ from a mean.
    return [
        np.round(rng.standard_t(2, size=SHAPE), 2).astype(np.float32) * np.float32(10.0 ** rng.uniform(-2, 2))
        for _ in range(count)
    ]


def _stack(updates: list[np.ndarray], capacity: int) -> UpdateStack:
    stack = UpdateStack(updates[0].size, capacity)
    for update in updates:
        stack.append(update)
    return stack


def test_a_block_boundary_falls_inside_the_test_tensor() -> None:
    assert np.prod(SHAPE) > MAX_BLOCK_COORDINATES


@pytest.mark.parametrize("count", COUNTS)
def test_median_equals_numpy_median_exactly(count: int) -> None:
    updates = _updates(count, count)
    expected = np.median(np.stack(updates), axis=0)

    from_arrays = coordinate_median(updates)
    from_stack = coordinate_median(_stack(updates, capacity=count)).reshape(SHAPE)

    assert from_arrays.dtype == np.float32
    assert from_arrays.shape == SHAPE
    np.testing.assert_array_equal(from_arrays, expected)
    np.testing.assert_array_equal(from_stack, expected)


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.45])
def test_trimmed_mean_equals_scipy_trim_mean(count: int, fraction: float) -> None:
    updates = _updates(count, 100 + count)
    expected = scipy.stats.trim_mean(np.stack(updates), fraction, axis=0)

    from_arrays = trimmed_mean(updates, fraction)
    from_stack = trimmed_mean(_stack(updates, capacity=count), fraction).reshape(SHAPE)

    assert from_arrays.dtype == np.float32
    # The same values are summed; only the float32 summation order differs from scipy's.
    scale = np.abs(np.stack(updates)).max(axis=0)
    np.testing.assert_allclose(from_arrays, expected, rtol=0, atol=1e-6 * scale.max())
    np.testing.assert_allclose(from_stack, expected, rtol=0, atol=1e-6 * scale.max())


@pytest.mark.parametrize("capacity", [1, 20, 30])
def test_a_stack_that_grows_and_is_read_half_filled_keeps_every_update(capacity: int) -> None:
    updates = _updates(70, 7)
    stack = UpdateStack(updates[0].size, capacity)
    for count, update in enumerate(updates, start=1):
        stack.append(update)
        if count in (1, 5, 16, 17, 33, 70):  # reading flushes a partial group of a transposed stack
            np.testing.assert_array_equal(stack.rows(), np.stack(updates[:count]).reshape(count, -1))
    assert len(stack) == 70


def test_a_robust_rule_outvotes_a_minority_of_huge_values() -> None:
    honest = [np.full(1000, 1.0, dtype=np.float32) + np.float32(0.01 * i) for i in range(7)]
    attackers = [np.full(1000, 1e6, dtype=np.float32), np.full(1000, -1e6, dtype=np.float32)]

    assert np.all(np.abs(coordinate_median(honest + attackers) - 1.03) < 0.011)
    assert np.all(np.abs(trimmed_mean(honest + attackers, 0.2) - 1.03) < 0.011)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("count", [5, 40])
def test_a_non_finite_value_is_refused(bad: float, count: int) -> None:
    updates = _updates(count, 3)
    updates[1][4, 2500] = bad
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        coordinate_median(updates)
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        trimmed_mean(_stack(updates, count), 0.1)


def test_refuses_no_updates_mismatched_updates_and_bad_fractions() -> None:
    with pytest.raises(InvalidInput, match="at least one"):
        coordinate_median([])
    with pytest.raises(InvalidInput, match="at least one"):
        coordinate_median(UpdateStack(10))
    with pytest.raises(InvalidInput, match="expected float32"):
        coordinate_median([np.zeros(3, np.float32), np.zeros(4, np.float32)])
    with pytest.raises(InvalidInput, match="expected float32"):
        coordinate_median([np.zeros(3, np.float32), np.zeros(3, np.float64)])
    with pytest.raises(InvalidInput, match="expected float32"):
        UpdateStack(10).append(np.zeros(11, np.float32))
    for fraction in (-0.1, 0.5, 0.7):
        with pytest.raises(InvalidInput, match="trim fraction"):
            trimmed_mean([np.zeros(3, np.float32)], fraction)


def test_trims_as_scipy_counts() -> None:
    assert [trimmed_per_side(n, 0.1) for n in (1, 9, 10, 19, 20, 100)] == [0, 0, 1, 1, 2, 10]


@pytest.mark.parametrize("count", range(1, 13))
def test_networks_put_the_wanted_ranks_in_place_for_every_input(count: int) -> None:
    """By the 0-1 principle, a comparator network that orders every 0/1 input orders every input."""
    middle = (count // 2,) if count % 2 else (count // 2 - 1, count // 2)
    cut = trimmed_per_side(count, 0.25)
    for bits in itertools.product((0, 1), repeat=count):
        expected = sorted(bits)
        wires = list(bits)
        for low, high in sorting_network(count, middle):
            wires[low], wires[high] = min(wires[low], wires[high]), max(wires[low], wires[high])
        assert [wires[r] for r in middle] == [expected[r] for r in middle]

        wires = list(bits)
        for low, high in extremes_network(count, cut):
            wires[low], wires[high] = min(wires[low], wires[high]), max(wires[low], wires[high])
        assert sorted(wires[cut : count - cut]) == expected[cut : count - cut]


@pytest.mark.parametrize("count", [10, 64])
def test_working_memory_is_one_block_whatever_the_model_size(count: int) -> None:
    floats = 2_000_000
    updates = [np.random.default_rng(i).standard_normal(floats, dtype=np.float32) for i in range(count)]
    tracemalloc.start()
    try:
        coordinate_median(updates)
        trimmed_mean(updates, 0.1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The result (8 MB) plus about one block; N updates would be 80-512 MB.
    assert peak < floats * 4 + 4 * BLOCK_BYTES
