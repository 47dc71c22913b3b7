"""Acceptance gates on real weights: a model fitted a little further on the digits passes, and
a poisoned candidate (sign-flipped, scaled up, or NaN) fails the gate that guards against it,
with a sentence that says why. No training framework: the weights are fitted by a few plain
numpy gradient steps, and the gates compute everything with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jurisfed.errors import InvalidInput
from jurisfed.gates import GateConfig, GateName, evaluate_gates, evaluate_weight_gates
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.tensors import Weights

MODEL = Mlp(input_dim=64, hidden_units=(32,), num_classes=10)
TRAIN = slice(0, 1200)
PROBE = slice(1200, None)
STRICT = GateConfig(max_accuracy_drop=0.02, min_accuracy=0.5, max_loss_increase=0.0, max_update_norm=5.0)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


@pytest.fixture(scope="module")
def probe(digits: tuple[np.ndarray, np.ndarray]) -> LabelledExamples:
    features, labels = digits
    return LabelledExamples(features[PROBE], labels[PROBE])


@pytest.fixture(scope="module")
def fitted(digits: tuple[np.ndarray, np.ndarray]) -> list[Weights]:
    """Weights after 0, 20 and 30 full-batch gradient steps from Mlp's initial weights."""
    features, labels = digits
    weights = MODEL.initial_weights(seed=0)
    snapshots = [weights]
    for step in range(1, 31):
        weights = gradient_step(weights, features[TRAIN], labels[TRAIN], learning_rate=0.5)
        if step in (20, 30):
            snapshots.append(weights)
    return snapshots


def gradient_step(
    weights: Weights, features: np.ndarray, labels: np.ndarray, learning_rate: float
) -> Weights:
    """One step of softmax cross-entropy descent for a one-hidden-layer ReLU network."""
    hidden = np.maximum(features @ weights["hidden_1/kernel"] + weights["hidden_1/bias"], 0.0)
    logits = hidden @ weights["head/kernel"] + weights["head/bias"]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    probabilities[np.arange(len(labels)), labels] -= 1.0
    d_logits = probabilities / len(labels)
    d_hidden = (d_logits @ weights["head/kernel"].T) * (hidden > 0)
    gradients = {
        "head/kernel": hidden.T @ d_logits,
        "head/bias": d_logits.sum(axis=0),
        "hidden_1/kernel": features.T @ d_hidden,
        "hidden_1/bias": d_hidden.sum(axis=0),
    }
    return {name: (weights[name] - learning_rate * gradients[name]).astype(np.float32) for name in weights}


def test_a_small_real_improvement_passes_every_gate(fitted: list[Weights], probe: LabelledExamples) -> None:
    committed, candidate = fitted[1], fitted[2]  # 20 steps, then 10 more

    report = evaluate_gates(STRICT, MODEL, candidate, committed, probe)

    assert report.passed, report.summary
    assert [check.name for check in report.checks] == [
        GateName.FINITE_WEIGHTS,
        GateName.ACCURACY_DROP,
        GateName.MIN_ACCURACY,
        GateName.LOSS_INCREASE,
        GateName.UPDATE_NORM,
    ]
    assert report.candidate_accuracy > report.committed_accuracy > 0.5
    assert report.candidate_loss < report.committed_loss
    assert report.candidate_accuracy == MODEL.accuracy(candidate, probe.features, probe.labels)
    assert 0.0 < report.update_norm < 5.0
    assert report.probe_examples == len(probe.labels)
    assert report.summary == f"all 5 gates passed on {len(probe.labels)} probe examples"


def test_the_first_round_from_initial_weights_passes(fitted: list[Weights], probe: LabelledExamples) -> None:
    report = evaluate_gates(STRICT, MODEL, fitted[1], fitted[0], probe)
    assert report.passed, report.summary
    assert report.committed_accuracy < 0.2 < 0.5 < report.candidate_accuracy


def test_a_sign_flipped_candidate_fails_on_accuracy_loss_and_norm(
    fitted: list[Weights], probe: LabelledExamples
) -> None:
    committed = fitted[2]
    poisoned = {name: -values for name, values in committed.items()}

    report = evaluate_gates(STRICT, MODEL, poisoned, committed, probe)

    assert not report.passed
    failed = {check.name: check for check in report.failures}
    assert set(failed) == {
        GateName.ACCURACY_DROP,
        GateName.MIN_ACCURACY,
        GateName.LOSS_INCREASE,
        GateName.UPDATE_NORM,
    }
    drop = failed[GateName.ACCURACY_DROP]
    assert drop.value == pytest.approx(report.committed_accuracy - report.candidate_accuracy)
    assert drop.value > 0.5
    assert drop.threshold == 0.02
    assert f"a fall of {drop.value:.4f}; at most 0.02 is allowed, so it fails." in drop.sentence
    assert report.summary.startswith("gates failed: accuracy_drop: probe accuracy")


def test_a_candidate_scaled_a_hundredfold_fails_the_update_norm_gate(
    fitted: list[Weights], probe: LabelledExamples
) -> None:
    committed = fitted[2]
    scaled = {name: values * np.float32(100.0) for name, values in committed.items()}

    report = evaluate_gates(GateConfig(max_update_norm=20.0), MODEL, scaled, committed, probe)

    [failure] = report.failures
    assert failure.name is GateName.UPDATE_NORM
    expected = 99.0 * math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in committed.values()))
    assert failure.value == pytest.approx(expected, rel=1e-4)
    assert "the round changes the model by an L2 norm of" in failure.sentence


def test_a_candidate_with_nan_fails_even_when_no_gate_is_configured(
    fitted: list[Weights], probe: LabelledExamples
) -> None:
    committed = fitted[2]
    broken = {name: values.copy() for name, values in committed.items()}
    broken["head/bias"][3] = np.nan

    report = evaluate_gates(GateConfig(), MODEL, broken, committed, probe)
    assert [(c.name, c.passed) for c in report.checks] == [(GateName.FINITE_WEIGHTS, False)]
    assert not report.passed

    strict = evaluate_gates(STRICT, MODEL, broken, committed, probe)
    failed = {check.name for check in strict.failures}
    assert {GateName.FINITE_WEIGHTS, GateName.LOSS_INCREASE, GateName.UPDATE_NORM} <= failed
    assert strict.update_norm == math.inf


def test_an_unchanged_model_sits_exactly_on_the_zero_thresholds(
    fitted: list[Weights], probe: LabelledExamples
) -> None:
    same = fitted[2]
    report = evaluate_gates(
        GateConfig(max_accuracy_drop=0.0, max_loss_increase=0.0), MODEL, same, same, probe
    )
    assert report.passed
    assert [c.value for c in report.checks[1:]] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_accuracy_drop": 1.5}, "max_accuracy_drop is a fraction"),
        ({"min_accuracy": -0.1}, "min_accuracy is a fraction"),
        ({"max_loss_increase": -1.0}, "max_loss_increase must be a non-negative number"),
        ({"max_update_norm": 0.0}, "max_update_norm must be a positive number"),
        ({"max_update_norm": math.inf}, "max_update_norm must be a positive number"),
    ],
)
def test_thresholds_out_of_range_are_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig(**settings)


def test_a_probe_set_must_fit_the_model(fitted: list[Weights], digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    with pytest.raises(InvalidInput, match="as many labels as examples"):
        LabelledExamples(features[:10], labels[:9])
    with pytest.raises(InvalidInput, match="features"):
        LabelledExamples(features[0], labels[:1])
    with pytest.raises(InvalidInput, match="probe features have 32 columns; the model takes 64"):
        evaluate_gates(STRICT, MODEL, fitted[1], fitted[0], LabelledExamples(features[:5, :32], labels[:5]))
    wrong = dict(fitted[1])
    del wrong["head/bias"]
    with pytest.raises(InvalidInput, match="do not match"):
        evaluate_gates(STRICT, MODEL, wrong, fitted[0], LabelledExamples(features[:5], labels[:5]))


def test_without_a_probe_set_the_weight_gates_still_catch_a_poisoned_candidate(fitted: list[Weights]) -> None:
    committed, candidate = fitted[0], fitted[1]
    config = GateConfig(max_update_norm=5.0)
    checks, norm = evaluate_weight_gates(config, candidate, committed)
    assert [(c.name, c.passed) for c in checks] == [
        (GateName.FINITE_WEIGHTS, True),
        (GateName.UPDATE_NORM, True),
    ]
    assert 0 < norm <= 5.0

    scaled = {name: committed[name] + 100 * (candidate[name] - committed[name]) for name in candidate}
    checks, norm = evaluate_weight_gates(config, scaled, committed)
    assert [(c.name, c.passed) for c in checks] == [
        (GateName.FINITE_WEIGHTS, True),
        (GateName.UPDATE_NORM, False),
    ]
    assert "so it fails" in checks[1].sentence

    poisoned = {**candidate, "head/bias": np.full_like(candidate["head/bias"], np.nan)}
    checks, norm = evaluate_weight_gates(GateConfig(), poisoned, committed)
    assert [(c.name, c.passed) for c in checks] == [(GateName.FINITE_WEIGHTS, False)]
    assert math.isinf(norm)
