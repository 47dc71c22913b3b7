"""Top-k keeps exactly the k values of largest magnitude, however the tensor is laid out."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.compression.topk import kept_count, top_k
from jurisfed.tensors import FloatArray


def _largest(values: FloatArray, k: int) -> set[int]:
    return {int(i) for i in np.argsort(-np.abs(values), kind="stable")[:k]}


@pytest.mark.parametrize(
    ("size", "density", "kept"),
    [
        (0, 0.01, 0),
        (1, 0.01, 1),
        (10, 0.01, 1),  # never zero of a non-empty tensor
        (100, 0.07, 7),  # 0.07 * 100 is 7.000000000000001 in floating point: still 7
        (50_176, 0.01, 502),
        (1000, 1.0, 1000),
        (3, 0.5, 2),  # round half to even: 1.5 -> 2
        (5, 0.5, 2),  # 2.5 -> 2
    ],
)
def test_kept_count_is_the_rounded_fraction_at_least_one(size: int, density: float, kept: int) -> None:
    assert kept_count(size, density) == kept


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01, float("nan"), float("inf")])
def test_a_density_out_of_range_is_refused(density: float) -> None:
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        kept_count(10, density)


@pytest.mark.parametrize("size", [1, 37, 10_000, 600_000])  # 600k: the sampled threshold path
@pytest.mark.parametrize("density", [0.001, 0.01, 0.3, 1.0])
def test_top_k_keeps_exactly_the_k_largest_magnitudes_in_ascending_order(size: int, density: float) -> None:
    values = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    k = kept_count(size, density)

    indices = top_k(values, k)

    assert indices.dtype == np.dtype("<u4")
    assert indices.size == k
    assert np.all(np.diff(indices.astype(np.int64)) > 0)
    assert set(indices.tolist()) == _largest(values, k)


def test_ties_at_the_kth_magnitude_go_to_the_lowest_positions_so_exactly_k_are_kept() -> None:
    values = np.array([1, -3, 2, 3, -2, 2, 0, 2], dtype=np.float32)

    assert top_k(values, 4).tolist() == [1, 2, 3, 4]
    assert top_k(np.ones(1000, np.float32), 10).tolist() == list(range(10))


def test_large_values_the_sample_never_sees_are_still_kept() -> None:
    # The threshold sample takes every 16th value of 2**20: put the large ones in between,
    # so the estimate is far too low and every value is a candidate.
    size = 1 << 20
    values = np.random.default_rng(1).standard_normal(size).astype(np.float32) * 1e-3
    values[np.arange(size) % 16 == 7] *= 1e4

    indices = top_k(values, 1000)

    assert set(indices.tolist()) == _largest(values, 1000)


def test_when_only_sampled_values_are_large_the_selection_still_finds_every_one_of_the_top_k() -> None:
    # Only sampled positions are large: the estimate is too high for k beyond them, and the
    # selection must fall back to every value.
    size = 1 << 20
    values = np.random.default_rng(2).standard_normal(size).astype(np.float32)
    values[:: size // 65536] *= 1e4

    indices = top_k(values, 70_000)

    assert set(indices.tolist()) == _largest(values, 70_000)


def test_keeping_none_or_all_is_exact() -> None:
    values = np.arange(5, dtype=np.float32)

    assert top_k(values, 0).tolist() == []
    assert top_k(values, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot keep 6 of 5 values"):
        top_k(values, 6)


def test_the_top_k_codec_decodes_the_kept_values_exactly_and_zeros_elsewhere() -> None:
    values = np.random.default_rng(3).standard_normal((40, 25)).astype(np.float32)

    encoded = Codec(CodecKind.TOP_K, density=0.05).encode(values, np.random.default_rng())
    decoded = encoded.decode()

    kept = sorted(_largest(values.reshape(-1), 50))
    assert encoded.indices is not None
    assert encoded.indices.tolist() == kept
    np.testing.assert_array_equal(decoded[kept], values.reshape(-1)[kept])
    assert np.count_nonzero(decoded) == 50
    assert encoded.payload_bytes == 50 * 8
