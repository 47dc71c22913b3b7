"""The streaming weighted mean: equal to TFF's weighted MeanFactory, strict on input, flat in memory."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from jurisfed.aggregation.streaming_mean import BLOCK_BYTES, StreamingWeightedMean
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.tensors import ModelSpec, TensorSpec, Weights

# Odd shapes, a scalar, and one tensor of ~1.4 blocks so a block boundary falls inside it.
SPEC = ModelSpec(
    "odd-shapes",
    (
        TensorSpec("dense/kernel", (7, 13)),
        TensorSpec("dense/bias", (13,)),
        TensorSpec("scale", ()),
        TensorSpec("big", (311, 3, 97)),
    ),
)


def _random_updates(spec: ModelSpec, count: int, rng: np.random.Generator) -> list[Weights]:
    return [
        {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors} for _ in range(count)
    ]


def _mean_of(spec: ModelSpec, updates: list[Weights], weights: list[float]) -> Weights:
    mean = StreamingWeightedMean(spec)
    for update, weight in zip(updates, weights, strict=True):
        mean.add(update, weight)
    return mean.result()


def _tff_mean(spec: ModelSpec, updates: list[Weights], weights: list[float]) -> Weights:
    import tensorflow_federated as tff

    value_type = tff.StructType([(t.name, tff.TensorType(np.float32, t.shape)) for t in spec.tensors])
    process = tff.aggregators.MeanFactory().create(value_type, tff.TensorType(np.float32))
    output = process.next(process.initialize(), updates, [np.float32(w) for w in weights])
    return {name: np.asarray(value) for name, value in output.result.items()}


def test_the_big_tensor_spans_more_than_one_block() -> None:
    assert SPEC.tensor("big").size * 4 > BLOCK_BYTES


@pytest.mark.usefixtures("tff_cpp_context")
@pytest.mark.parametrize(("clients", "seed"), [(1, 0), (3, 1), (20, 2), (20, 3)])
def test_equals_tff_weighted_mean(clients: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = _random_updates(SPEC, clients, rng)
    # Weights from 1e-3 to 1e4: one silo with a few examples next to one with many.
    weights = [float(w) for w in 10.0 ** rng.uniform(-3, 4, size=clients)]

    ours = _mean_of(SPEC, updates, weights)
    theirs = _tff_mean(SPEC, updates, weights)

    assert list(ours) == list(theirs)
    for name, expected in theirs.items():
        assert ours[name].dtype == np.float32
        assert ours[name].shape == expected.shape
        np.testing.assert_allclose(ours[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def test_order_of_updates_does_not_matter() -> None:
    rng = np.random.default_rng(4)
    updates = _random_updates(SPEC, 8, rng)
    weights = [float(w) for w in rng.uniform(0.1, 100.0, size=8)]
    order = rng.permutation(8)

    forward = _mean_of(SPEC, updates, weights)
    shuffled = _mean_of(SPEC, [updates[i] for i in order], [weights[i] for i in order])

    for name in forward:
        np.testing.assert_allclose(shuffled[name], forward[name], rtol=1e-6, atol=1e-6)


def test_counts_contributors_and_their_weight() -> None:
    mean = StreamingWeightedMean(SPEC)
    assert (mean.contributors, mean.total_weight) == (0, 0.0)
    updates = _random_updates(SPEC, 3, np.random.default_rng(5))
    for update, weight in zip(updates, [2.0, 0.5, 40.0], strict=True):
        mean.add(update, weight)
    assert mean.contributors == 3
    assert mean.total_weight == pytest.approx(42.5)


def test_a_single_update_is_its_own_mean_whatever_its_weight() -> None:
    (update,) = _random_updates(SPEC, 1, np.random.default_rng(6))
    result = _mean_of(SPEC, [update], [1234.5])
    for name, values in update.items():
        np.testing.assert_allclose(result[name], values, rtol=1e-6)


def test_a_non_contiguous_update_is_read_in_its_logical_order() -> None:
    (update,) = _random_updates(SPEC, 1, np.random.default_rng(7))
    fortran_order = {name: values.T.copy().T for name, values in update.items()}
    result = _mean_of(SPEC, [fortran_order], [3.0])
    for name, values in update.items():
        np.testing.assert_allclose(result[name], values, rtol=1e-6)


def test_result_is_a_copy_and_adding_may_continue_after_it() -> None:
    first, second = _random_updates(SPEC, 2, np.random.default_rng(8))
    mean = StreamingWeightedMean(SPEC)
    mean.add(first, 1.0)
    mean.result()["big"][...] = 1e9
    np.testing.assert_allclose(mean.result()["big"], first["big"])

    mean.add(second, 1.0)
    np.testing.assert_allclose(mean.result()["big"], (first["big"] + second["big"]) / 2, rtol=1e-6)


def test_result_before_any_update_is_wrong_state() -> None:
    with pytest.raises(WrongState, match="no update"):
        StreamingWeightedMean(SPEC).result()


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_refuses_a_weight_that_is_not_finite_and_positive(weight: float) -> None:
    mean = StreamingWeightedMean(SPEC)
    (update,) = _random_updates(SPEC, 1, np.random.default_rng(9))
    with pytest.raises(InvalidInput, match="weight"):
        mean.add(update, weight)
    assert (mean.contributors, mean.total_weight) == (0, 0.0)


def _wrong_shape(update: Weights) -> Weights:
    return {**update, "dense/bias": np.zeros(12, dtype=np.float32)}


def _wrong_dtype(update: Weights) -> Weights:
    return {**update, "dense/bias": update["dense/bias"].astype(np.float64)}


def _missing_tensor(update: Weights) -> Weights:
    return {name: values for name, values in update.items() if name != "scale"}


def _extra_tensor(update: Weights) -> Weights:
    return {**update, "extra": np.zeros(3, dtype=np.float32)}


@pytest.mark.parametrize("malform", [_wrong_shape, _wrong_dtype, _missing_tensor, _extra_tensor])
def test_refuses_an_update_that_does_not_match_the_model_and_keeps_its_state(
    malform: Callable[[Weights], Weights],
) -> None:
    good, other = _random_updates(SPEC, 2, np.random.default_rng(10))
    mean = StreamingWeightedMean(SPEC)
    mean.add(good, 2.0)

    with pytest.raises(InvalidInput):
        mean.add(malform(other), 1.0)

    assert (mean.contributors, mean.total_weight) == (1, 2.0)
    for name, values in good.items():
        np.testing.assert_allclose(mean.result()[name], values, rtol=1e-6)


def _peak_bytes_while_adding(count: int, spec: ModelSpec) -> int:
    updates = _random_updates(spec, 3, np.random.default_rng(11))
    mean = StreamingWeightedMean(spec)
    tracemalloc.start()
    try:
        for i in range(count):
            mean.add(updates[i % len(updates)], 1.0 + i)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_updates() -> None:
    spec = ModelSpec("one-million", (TensorSpec("w", (1000, 1000)), TensorSpec("b", (1000,))))

    after_5 = _peak_bytes_while_adding(5, spec)
    after_50 = _peak_bytes_while_adding(50, spec)

    # Adding allocates no temporary the size of an update (4 MB here), and nothing per update kept.
    assert after_5 < spec.float32_bytes / 20
    assert after_50 < after_5 + 16 * 1024
