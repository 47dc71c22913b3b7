"""A multilayer perceptron classifier, described and initialised without TensorFlow.

Aggregators only need the tensor names and shapes and a deterministic starting point; the
silos build the same network in Keras (`silo.model`). Tensor names are `<layer>/kernel` and
`<layer>/bias`; the last layer is `head`, the jurisdiction-specific part in personalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec, Weights

HEAD = "head"


@dataclass(frozen=True)
class Mlp:
    input_dim: int
    hidden_units: tuple[int, ...]
    num_classes: int

    @property
    def name(self) -> str:
        widths = (self.input_dim, *self.hidden_units, self.num_classes)
        return "mlp-" + "-".join(str(w) for w in widths)

    @property
    def layers(self) -> tuple[tuple[str, int, int], ...]:
        """(layer name, fan in, fan out) from input to head."""
        widths = (self.input_dim, *self.hidden_units, self.num_classes)
        names = [f"hidden_{i + 1}" for i in range(len(self.hidden_units))] + [HEAD]
        return tuple((name, widths[i], widths[i + 1]) for i, name in enumerate(names))

    def spec(self) -> ModelSpec:
        tensors: list[TensorSpec] = []
        for layer, fan_in, fan_out in self.layers:
            tensors.append(TensorSpec(f"{layer}/kernel", (fan_in, fan_out)))
            tensors.append(TensorSpec(f"{layer}/bias", (fan_out,)))
        return ModelSpec(self.name, tuple(tensors))

    def initial_weights(self, seed: int) -> Weights:
        """Glorot-uniform kernels and zero biases, as Keras initialises Dense layers."""
        rng = np.random.default_rng(seed)
        weights: Weights = {}
        for layer, fan_in, fan_out in self.layers:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            weights[f"{layer}/kernel"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
            weights[f"{layer}/bias"] = np.zeros(fan_out, dtype=np.float32)
        return weights

    def logits(self, weights: Weights, features: FloatArray) -> FloatArray:
        """The network's outputs before softmax, computed with numpy (ReLU hidden layers)."""
        activations = features.astype(np.float32, copy=False)
        for layer, _, _ in self.layers:
            activations = activations @ weights[f"{layer}/kernel"] + weights[f"{layer}/bias"]
            if layer != HEAD:
                np.maximum(activations, 0.0, out=activations)
        return activations

    def accuracy(self, weights: Weights, features: FloatArray, labels: npt.NDArray[np.int64]) -> float:
        if len(labels) == 0:
            raise ValueError("accuracy of an empty test split is undefined")
        predictions = np.argmax(self.logits(weights, features), axis=1)
        return float(np.mean(predictions == labels))

    @classmethod
    def parse(cls, name: str) -> Mlp:
        """The inverse of `name`: 'mlp-64-256-128-10' -> Mlp(64, (256, 128), 10)."""
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "mlp" or not all(p.isdigit() and int(p) > 0 for p in parts[1:]):
            raise ValueError(f"{name!r} is not an MLP architecture name such as 'mlp-64-256-128-10'")
        widths = [int(p) for p in parts[1:]]
        return cls(widths[0], tuple(widths[1:-1]), widths[-1])


# The architecture of the digits task the demo trains (8x8 images, 10 classes).
DIGITS_MLP = Mlp(input_dim=64, hidden_units=(256, 128), num_classes=10)
