"""The Keras network for an `Mlp`, and the bridge between Keras variables and jurisfed `Weights`.

Layer names follow the spec (`hidden_1`, ..., `head`), so a Keras variable and a jurisfed
tensor are matched by name (`hidden_1/kernel`), never by position alone.
"""

from __future__ import annotations

import os

# Before TensorFlow's first import: keep its C++ INFO and WARNING lines out of silo logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow as tf

from jurisfed.errors import InvalidInput
from jurisfed.modeling.mlp import HEAD, Mlp
from jurisfed.tensors import FloatArray, Weights

tf.get_logger().setLevel("ERROR")


def build_model(arch: Mlp) -> tf.keras.Model:
    """Dense layers with ReLU between them; the `head` outputs logits (no softmax)."""
    inputs = tf.keras.Input(shape=(arch.input_dim,), dtype=tf.float32, name="features")
    outputs = inputs
    for layer, _, fan_out in arch.layers:
        activation = None if layer == HEAD else "relu"
        outputs = tf.keras.layers.Dense(fan_out, activation=activation, name=layer)(outputs)
    return tf.keras.Model(inputs, outputs, name=arch.name)


def get_weights(model: tf.keras.Model) -> Weights:
    """The model's current values as jurisfed weights, in spec order (layer by layer)."""
    return {
        name: variable.numpy().astype(np.float32, copy=False) for name, variable in named_variables(model)
    }


def set_weights(model: tf.keras.Model, weights: Mapping[str, FloatArray]) -> None:
    """Assign every tensor by name; refuse missing, extra or misshapen tensors before changing any."""
    variables = dict(named_variables(model))
    if sorted(weights) != sorted(variables):
        raise InvalidInput(f"tensors {sorted(weights)} do not match the model's {list(variables)}")
    for name, variable in variables.items():
        array = weights[name]
        if tuple(array.shape) != tuple(variable.shape) or array.dtype != np.float32:
            raise InvalidInput(
                f"tensor {name!r} is {array.dtype}{list(array.shape)}, expected float32{list(variable.shape)}"
            )
    for name, variable in variables.items():
        variable.assign(weights[name])


def named_variables(model: tf.keras.Model) -> Iterator[tuple[str, tf.Variable]]:
    """(`<layer>/kernel`, variable), (`<layer>/bias`, variable), ... for each Dense layer in order."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Dense):
            yield f"{layer.name}/kernel", layer.kernel
            yield f"{layer.name}/bias", layer.bias
