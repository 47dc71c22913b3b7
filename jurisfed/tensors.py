"""Model weights as the domain sees them: named float32 arrays described by a ModelSpec."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from jurisfed.errors import InvalidInput

FloatArray = npt.NDArray[np.float32]
# Ordered by the ModelSpec; every participant iterates tensors in spec order.
Weights = dict[str, FloatArray]

SUPPORTED_DTYPES = ("float32",)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    tensors: tuple[TensorSpec, ...]

    @property
    def total_elements(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def float32_bytes(self) -> int:
        return 4 * self.total_elements

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.tensors:
            if spec.name == name:
                return spec
        raise InvalidInput(f"tensor {name!r} is not part of model {self.architecture!r}")

    def without(self, names: Iterable[str]) -> ModelSpec:
        """This spec less the tensors in `names` (what a sender withholding them streams)."""
        left_out = frozenset(names)
        return ModelSpec(self.architecture, tuple(t for t in self.tensors if t.name not in left_out))

    def zeros(self) -> Weights:
        return {t.name: np.zeros(t.shape, dtype=np.float32) for t in self.tensors}

    def check(self, weights: Mapping[str, FloatArray]) -> None:
        """Raise InvalidInput unless `weights` has exactly this spec's tensors, shapes and dtypes."""
        expected = [t.name for t in self.tensors]
        if sorted(weights) != sorted(expected):
            raise InvalidInput(f"tensors {sorted(weights)} do not match the model's {expected}")
        for spec in self.tensors:
            array = weights[spec.name]
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                raise InvalidInput(
                    f"tensor {spec.name!r} is {array.dtype}{list(array.shape)}, "
                    f"expected {spec.dtype}{list(spec.shape)}"
                )


def weights_sha256(spec: ModelSpec, weights: Mapping[str, FloatArray]) -> str:
    """A digest of the values in spec order; equal weights give equal digests on every platform."""
    digest = hashlib.sha256()
    for tensor in spec.tensors:
        digest.update(tensor.name.encode())
        digest.update(np.ascontiguousarray(weights[tensor.name], dtype="<f4").tobytes())
    return digest.hexdigest()


def add(base: Mapping[str, FloatArray], delta: Mapping[str, FloatArray]) -> Weights:
    return {name: (base[name] + delta[name]).astype(np.float32) for name in base}


def subtract(after: Mapping[str, FloatArray], before: Mapping[str, FloatArray]) -> Weights:
    return {name: (after[name] - before[name]).astype(np.float32) for name in after}
