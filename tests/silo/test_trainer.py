"""Local training with real TensorFlow: the Keras network is the numpy one, and SGD learns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jurisfed.errors import ConfigError, InvalidInput
from jurisfed.modeling.mlp import DIGITS_MLP, Mlp
from jurisfed.rounds import TrainingConfig
from jurisfed.tensors import Weights, add
from silo.data import LocalDataset
from silo.model import build_model, get_weights, set_weights
from silo.trainer import train

CONFIG = TrainingConfig(epochs=3, batch_size=16, learning_rate=0.1)


@pytest.fixture(scope="module")
def digits() -> LocalDataset:
    features, labels = load_digits(return_X_y=True)
    return LocalDataset((features[:160] / 16.0).astype(np.float32), labels[:160].astype(np.int64))


def cross_entropy(arch: Mlp, weights: Weights, data: LocalDataset) -> float:
    logits = arch.logits(weights, data.features).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(data.labels)), data.labels]))


def norm(weights: Weights) -> float:
    return float(np.sqrt(sum(np.sum(np.square(w, dtype=np.float64)) for w in weights.values())))


@pytest.mark.parametrize("arch", [DIGITS_MLP, Mlp(input_dim=5, hidden_units=(7,), num_classes=3)])
def test_keras_predictions_equal_the_numpy_network_on_the_same_weights(arch: Mlp) -> None:
    weights = arch.initial_weights(seed=3)
    weights = {name: w + np.float32(0.01) for name, w in weights.items()}  # non-zero biases too
    features = np.random.default_rng(0).uniform(0, 1, (32, arch.input_dim)).astype(np.float32)
    model = build_model(arch)

    set_weights(model, weights)

    np.testing.assert_allclose(model(features).numpy(), arch.logits(weights, features), rtol=1e-5, atol=1e-5)
    read_back = get_weights(model)
    assert list(read_back) == [t.name for t in arch.spec().tensors]
    for name, value in weights.items():
        np.testing.assert_array_equal(read_back[name], value)


def test_set_weights_refuses_missing_or_misshapen_tensors_without_changing_the_model() -> None:
    arch = Mlp(input_dim=4, hidden_units=(3,), num_classes=2)
    model = build_model(arch)
    before = get_weights(model)
    weights = arch.initial_weights(seed=1)

    with pytest.raises(InvalidInput, match="do not match"):
        set_weights(model, {k: v for k, v in weights.items() if k != "head/bias"})
    with pytest.raises(InvalidInput, match="'hidden_1/bias' is float32\\[4\\], expected float32\\[3\\]"):
        set_weights(model, {**weights, "hidden_1/bias": np.zeros(4, np.float32)})

    for name, value in get_weights(model).items():
        np.testing.assert_array_equal(value, before[name])


def test_training_lowers_the_loss_on_the_local_data(digits: LocalDataset) -> None:
    start = DIGITS_MLP.initial_weights(seed=0)

    result = train(DIGITS_MLP, start, digits, CONFIG, seed=1)

    trained = add(start, result.delta)
    assert cross_entropy(DIGITS_MLP, trained, digits) < 0.5 * cross_entropy(DIGITS_MLP, start, digits)
    assert DIGITS_MLP.accuracy(trained, digits.features, digits.labels) > 0.8
    assert result.example_count == 160
    assert 0 < result.train_loss < cross_entropy(DIGITS_MLP, start, digits)
    DIGITS_MLP.spec().check(result.delta)


def test_training_is_deterministic_for_a_seed_and_leaves_the_start_weights_alone(
    digits: LocalDataset,
) -> None:
    start = DIGITS_MLP.initial_weights(seed=0)
    snapshot = {name: w.copy() for name, w in start.items()}

    first = train(DIGITS_MLP, start, digits, CONFIG, seed=7)
    other_seed = train(DIGITS_MLP, start, digits, CONFIG, seed=8)
    again = train(DIGITS_MLP, start, digits, CONFIG, seed=7)

    for name in start:
        np.testing.assert_array_equal(first.delta[name], again.delta[name])
        np.testing.assert_array_equal(start[name], snapshot[name])
    assert first.train_loss == again.train_loss
    assert any(not np.array_equal(first.delta[n], other_seed.delta[n]) for n in start)


def test_a_strong_proximal_term_keeps_the_update_close_to_the_start(digits: LocalDataset) -> None:
    start = DIGITS_MLP.initial_weights(seed=0)
    plain = train(DIGITS_MLP, start, digits, CONFIG, seed=1)
    config = dataclasses.replace(CONFIG, proximal_mu=5.0)

    proximal = train(DIGITS_MLP, start, digits, config, seed=1)

    assert norm(proximal.delta) < 0.5 * norm(plain.delta)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TrainingConfig(epochs=0, batch_size=16, learning_rate=0.1), "epochs"),
        (TrainingConfig(epochs=1, batch_size=0, learning_rate=0.1), "batch_size"),
        (TrainingConfig(epochs=1, batch_size=16, learning_rate=float("nan")), "learning_rate"),
        (TrainingConfig(epochs=1, batch_size=16, learning_rate=0.1, proximal_mu=-1.0), "proximal_mu"),
        (TrainingConfig(epochs=1, batch_size=16, learning_rate=0.5, proximal_mu=4.0), "diverges"),
    ],
)
def test_a_contract_that_cannot_be_run_is_refused(
    digits: LocalDataset, config: TrainingConfig, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        train(DIGITS_MLP, DIGITS_MLP.initial_weights(seed=0), digits, config, seed=0)


def test_local_data_that_does_not_fit_the_model_is_refused(digits: LocalDataset) -> None:
    narrow = Mlp(input_dim=8, hidden_units=(4,), num_classes=10)
    with pytest.raises(ConfigError, match="64 features, model mlp-8-4-10 expects 8"):
        train(narrow, narrow.initial_weights(seed=0), digits, CONFIG, seed=0)

    binary = Mlp(input_dim=64, hidden_units=(4,), num_classes=2)
    with pytest.raises(ConfigError, match="label 9, model mlp-64-4-2 knows 2 classes"):
        train(binary, binary.initial_weights(seed=0), digits, CONFIG, seed=0)
