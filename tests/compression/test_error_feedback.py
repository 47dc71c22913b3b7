"""Error feedback: the sum of what the receiver decodes tracks the sum of the true updates.

Without it, top-k drops the same small values round after round and the decoded sum drifts
ever further away; with it, the gap is exactly the sender's residual, which stays bounded. The
residual survives a restart through state() and load().
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.error_feedback import ErrorFeedback
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec, Weights

SPEC = ModelSpec("ef", (TensorSpec("kernel", (40, 50)), TensorSpec("bias", (50,))))
TOP_1 = Codec(CodecKind.TOP_K, density=0.01)
TOP_1_INT8 = Codec(CodecKind.TOP_K_INT8, density=0.01, block_size=64)


def update(rng: np.random.Generator, direction: Weights) -> Weights:
    """A training-like update: a steady direction plus as much noise."""
    return {
        name: (values + rng.standard_normal(values.shape)).astype(np.float32)
        for name, values in direction.items()
    }


def flat(weights: dict[str, FloatArray]) -> FloatArray:
    return np.concatenate([weights[t.name].reshape(-1) for t in SPEC.tensors])


def decoded(sent: dict[str, EncodedTensor]) -> FloatArray:
    return np.concatenate([sent[t.name].decode() for t in SPEC.tensors])


@pytest.mark.parametrize("codec", [TOP_1, TOP_1_INT8], ids=lambda c: c.kind.value)
def test_the_decoded_sum_tracks_the_true_sum_with_error_feedback_and_drifts_without(codec: Codec) -> None:
    rng = np.random.default_rng(0)
    direction = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
    feedback = ErrorFeedback(SPEC)
    true_sum, with_feedback, without = (np.zeros(SPEC.total_elements) for _ in range(3))
    gap_with, gap_without, residual_norms = {}, {}, {}

    for round_number in range(1, 401):
        delta = update(rng, direction)
        true_sum += flat(delta)
        with_feedback += decoded(feedback.compress(delta, codec, rng))
        without += decoded({name: codec.encode(values, rng) for name, values in delta.items()})
        if round_number in (200, 400):
            gap_with[round_number] = np.linalg.norm(true_sum - with_feedback) / np.linalg.norm(true_sum)
            gap_without[round_number] = np.linalg.norm(true_sum - without) / np.linalg.norm(true_sum)
            residual_norms[round_number] = feedback.residual_norm

    # Nothing is lost: what has not been decoded yet is exactly the residual.
    np.testing.assert_allclose(true_sum - with_feedback, flat(feedback.state()), atol=1e-3)
    # The residual is bounded: it no longer grows, so the relative gap halves as rounds double.
    assert residual_norms[400] < 1.1 * residual_norms[200]
    assert gap_with[400] < 0.15
    assert gap_with[400] < 0.6 * gap_with[200]
    # Without error feedback the gap grows with the sum: 92 % of it is never sent.
    assert gap_without[400] > 0.9
    assert gap_without[400] > 5 * gap_with[400]


def test_the_mean_of_compressed_updates_approaches_the_uncompressed_mean() -> None:
    """The numeric experiment of bench_codecs.py, small: 8 senders, 100 rounds, 2,050 values.

    Relative error of the running sum of per-round means against the uncompressed one.
    """
    rng = np.random.default_rng(1)
    direction = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
    codecs = {
        "int8": Codec(CodecKind.INT8),
        "top-1%+EF": TOP_1,
        "top-1%+int8+EF": TOP_1_INT8,
        "top-1% without EF": TOP_1,
    }
    feedback = {(name, sender): ErrorFeedback(SPEC) for name in codecs for sender in range(8)}
    exact = np.zeros(SPEC.total_elements)
    sums = {name: np.zeros(SPEC.total_elements) for name in codecs}
    halfway: dict[str, float] = {}

    for round_number in range(1, 101):
        deltas = [update(rng, direction) for _ in range(8)]
        exact += np.mean([flat(d) for d in deltas], axis=0)
        for name, codec in codecs.items():
            if name.endswith("without EF") or name == "int8":
                sent = [decoded({n: codec.encode(v, rng) for n, v in d.items()}) for d in deltas]
            else:
                sent = [decoded(feedback[name, i].compress(d, codec, rng)) for i, d in enumerate(deltas)]
            sums[name] += np.mean(sent, axis=0)
            if round_number == 50:
                halfway[name] = float(np.linalg.norm(exact - sums[name]) / np.linalg.norm(exact))

    error = {
        name: float(np.linalg.norm(exact - total) / np.linalg.norm(exact)) for name, total in sums.items()
    }
    assert error["int8"] < 0.001  # unbiased: errors average out
    # Top-1 % sends 8 % of an update's norm a round; error feedback sends the rest later, so
    # the error keeps falling (0.55 after 50 rounds, 0.34 after 100), where without it 92 %
    # of the sum is never sent.
    for name in ("top-1%+EF", "top-1%+int8+EF"):
        assert error[name] < 0.4
        assert error[name] < 0.7 * halfway[name]
    assert error["top-1% without EF"] > 0.9
    assert halfway["top-1% without EF"] > 0.9


def test_state_saved_to_disk_and_loaded_after_a_restart_continues_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    direction = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
    deltas = [update(rng, direction) for _ in range(6)]
    uninterrupted, before_restart = ErrorFeedback(SPEC), ErrorFeedback(SPEC)
    for delta in deltas[:3]:
        uninterrupted.compress(delta, TOP_1_INT8, np.random.default_rng(3))
        before_restart.compress(delta, TOP_1_INT8, np.random.default_rng(3))

    path = tmp_path / "residual.npz"
    np.savez(path, **before_restart.state())
    after_restart = ErrorFeedback(SPEC)
    with np.load(path, allow_pickle=False) as archive:
        after_restart.load({name: archive[name] for name in archive.files})

    for delta in deltas[3:]:
        expected = uninterrupted.compress(delta, TOP_1_INT8, np.random.default_rng(4))
        got = after_restart.compress(delta, TOP_1_INT8, np.random.default_rng(4))
        np.testing.assert_array_equal(decoded(got), decoded(expected))
    np.testing.assert_array_equal(flat(after_restart.state()), flat(uninterrupted.state()))


def test_state_is_a_copy_in_the_models_shapes() -> None:
    feedback = ErrorFeedback(SPEC)
    feedback.compress(update(np.random.default_rng(5), SPEC.zeros()), TOP_1, np.random.default_rng())

    state = feedback.state()
    state["kernel"][...] = 0

    assert [(name, array.shape, array.dtype) for name, array in state.items()] == [
        ("kernel", (40, 50), np.float32),
        ("bias", (50,), np.float32),
    ]
    assert feedback.residual_norm > 0


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.pop("bias"), r"residual tensors \['kernel'\] do not match the model's"),
        (lambda s: s.update(bias=np.zeros(49, np.float32)), r"residual of tensor 'bias' is float32\[49\]"),
        (lambda s: s.update(bias=np.zeros(50, np.float64)), r"residual of tensor 'bias' is float64\[50\]"),
        (
            lambda s: s["kernel"].__setitem__((3, 4), np.nan),
            "residual of tensor 'kernel': the residual holds NaN",
        ),
    ],
)
def test_a_residual_that_does_not_fit_the_model_is_refused_and_nothing_changes(change, problem: str) -> None:  # type: ignore[no-untyped-def]
    feedback = ErrorFeedback(SPEC)
    feedback.compress(update(np.random.default_rng(6), SPEC.zeros()), TOP_1, np.random.default_rng())
    before = flat(feedback.state())
    state = feedback.state()
    change(state)

    with pytest.raises(InvalidInput, match=problem):
        feedback.load(state)

    np.testing.assert_array_equal(flat(feedback.state()), before)


def test_a_non_finite_delta_is_refused_before_it_can_poison_the_residual() -> None:
    feedback = ErrorFeedback(SPEC)
    feedback.compress(update(np.random.default_rng(7), SPEC.zeros()), TOP_1, np.random.default_rng())
    before = flat(feedback.state())
    delta = update(np.random.default_rng(8), SPEC.zeros())
    delta["bias"][7] = np.inf

    with pytest.raises(InvalidInput, match="tensor 'bias': delta \\+ residual holds NaN or infinite"):
        feedback.compress(delta, TOP_1, np.random.default_rng())

    np.testing.assert_array_equal(flat(feedback.state()), before)


def test_an_update_never_delivered_is_added_back_so_nothing_is_lost() -> None:
    feedback = ErrorFeedback(SPEC)
    delta = update(np.random.default_rng(9), SPEC.zeros())

    sent = feedback.compress(delta, TOP_1_INT8, np.random.default_rng())
    feedback.add_back(sent)

    np.testing.assert_allclose(flat(feedback.state()), flat(delta), atol=1e-6)


def test_with_a_lossless_codec_the_residual_stays_zero() -> None:
    feedback = ErrorFeedback(SPEC)
    delta = update(np.random.default_rng(10), SPEC.zeros())

    sent = feedback.compress(delta, Codec(CodecKind.RAW), np.random.default_rng())

    np.testing.assert_array_equal(decoded(sent), flat(delta))
    assert feedback.residual_norm == 0.0
