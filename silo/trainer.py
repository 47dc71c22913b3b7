"""Local training: start from the round's weights, run SGD on the silo's data, return the delta.

The optimizer is plain minibatch SGD, as FedAvg and FedProx assume: it has no state to carry
between rounds or to reset (momentum or Adam moments would either leak one round into the next
or restart cold every round), and a silo's update is then exactly `-lr * sum of gradients`.
With `proximal_mu > 0` the FedProx term `mu/2 * ||w - w_start||^2` is added to the loss; its
gradient `mu * (w - w_start)` is applied in closed form rather than through the tape.

Building and tracing a Keras model costs far more than a round of training on a silo's data,
so one model and one traced training loop are kept per architecture for the whole process.
"""

from __future__ import annotations

import os

# Before TensorFlow's first import: keep its C++ INFO and WARNING lines out of silo logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from jurisfed.errors import ConfigError, InvalidInput
from jurisfed.modeling.mlp import Mlp
from jurisfed.rounds import TrainingConfig
from jurisfed.tensors import Weights, subtract
from silo.data import LocalDataset
from silo.model import build_model, get_weights, named_variables, set_weights

# Architectures whose model stays built in one process; a silo normally trains one.
CACHED_ARCHITECTURES = 4
MAX_PROXIMAL_STEP = 2.0


@dataclass(frozen=True)
class TrainResult:
    # trained weights - start weights, float32, in spec order.
    delta: Weights
    # Mean cross-entropy over the last epoch's minibatches (the proximal term excluded),
    # as Keras reports an epoch's loss.
    train_loss: float
    example_count: int


def train(arch: Mlp, start: Weights, data: LocalDataset, config: TrainingConfig, *, seed: int) -> TrainResult:
    """Train `arch` from `start` on `data`; the same seed, inputs and machine give the same delta."""
    check_config(config)
    arch.spec().check(start)
    if data.feature_count != arch.input_dim:
        raise ConfigError(
            f"local data has {data.feature_count} features, model {arch.name} expects {arch.input_dim}"
        )
    top_label = int(data.labels.max())
    if top_label >= arch.num_classes:
        raise ConfigError(
            f"local data has label {top_label}, model {arch.name} knows {arch.num_classes} classes"
        )

    # One permutation of the examples per epoch, drawn from the seed alone.
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(data.example_count) for _ in range(config.epochs)])
    program = _program(arch)
    with program.lock:
        set_weights(program.model, start)
        for anchor, variable in zip(program.anchors, program.variables, strict=True):
            anchor.assign(variable)
        loss = program.run(
            tf.constant(data.features),
            tf.constant(data.labels),
            tf.constant(orders, dtype=tf.int32),
            tf.constant(config.batch_size, dtype=tf.int32),
            tf.constant(config.learning_rate, dtype=tf.float32),
            tf.constant(config.proximal_mu, dtype=tf.float32),
        )
        trained = get_weights(program.model)
    return TrainResult(
        delta=subtract(trained, start), train_loss=float(loss), example_count=data.example_count
    )


def check_config(config: TrainingConfig) -> None:
    """Refuse a training contract that cannot be run as written."""
    if config.epochs < 1:
        raise InvalidInput(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, got {config.batch_size}")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise InvalidInput(f"learning_rate must be a positive number, got {config.learning_rate}")
    if not (math.isfinite(config.proximal_mu) and config.proximal_mu >= 0):
        raise InvalidInput(f"proximal_mu must be zero or positive, got {config.proximal_mu}")
    # Each step scales w - w_start by (1 - learning_rate * mu): from 2 on it grows instead of shrinking.
    if config.learning_rate * config.proximal_mu >= MAX_PROXIMAL_STEP:
        raise InvalidInput(
            f"learning_rate * proximal_mu must be below {MAX_PROXIMAL_STEP} or SGD on the proximal "
            f"term diverges, got {config.learning_rate} * {config.proximal_mu}"
        )


class _Program:
    """One Keras model, the anchors of the proximal term and the traced training loop."""

    def __init__(self, arch: Mlp) -> None:
        self.lock = threading.Lock()
        self.model = build_model(arch)
        self.variables = [variable for _, variable in named_variables(self.model)]
        self.anchors = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.run = tf.function(
            self._run,
            input_signature=[
                tf.TensorSpec([None, arch.input_dim], tf.float32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
            ],
        )

    def _run(
        self,
        features: tf.Tensor,
        labels: tf.Tensor,
        orders: tf.Tensor,
        batch_size: tf.Tensor,
        learning_rate: tf.Tensor,
        proximal_mu: tf.Tensor,
    ) -> tf.Tensor:
        """All epochs in one graph call; returns the last epoch's mean cross-entropy."""
        count = tf.shape(orders)[1]
        epoch_loss = tf.constant(0.0)
        for epoch in tf.range(tf.shape(orders)[0]):
            epoch_loss = tf.constant(0.0)
            for begin in tf.range(0, count, batch_size):
                batch = orders[epoch, begin : begin + batch_size]
                batch_labels = tf.gather(labels, batch)
                with tf.GradientTape() as tape:
                    logits = self.model(tf.gather(features, batch), training=True)
                    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(batch_labels, logits)
                    cross_entropy = tf.reduce_mean(per_example)
                gradients = tape.gradient(cross_entropy, self.variables)
                for variable, gradient, anchor in zip(self.variables, gradients, self.anchors, strict=True):
                    variable.assign_sub(learning_rate * (gradient + proximal_mu * (variable - anchor)))
                epoch_loss += tf.reduce_sum(per_example)
        return epoch_loss / tf.cast(count, tf.float32)


@functools.lru_cache(maxsize=CACHED_ARCHITECTURES)
def _program(arch: Mlp) -> _Program:
    return _Program(arch)
