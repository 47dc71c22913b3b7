"""A weighted mean of model updates folded in one at a time: the regional's hot path.

Memory is one accumulator per tensor plus one 256 KiB scratch block, whatever the number of
updates; each update is folded in block by block, so no temporary grows with the model.
Accumulation is float32, as in TFF's weighted mean (which the tests match to 1e-6), because a
float64 accumulator doubles the memory and halves the speed (bench/bench_aggregation.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from jurisfed.errors import InvalidInput, WrongState
from jurisfed.tensors import FloatArray, ModelSpec, Weights

BLOCK_BYTES = 256 * 1024
_BLOCK_ELEMENTS = BLOCK_BYTES // np.dtype(np.float32).itemsize


class StreamingWeightedMean:
    """Accumulates sum(weight * update) and sum(weight); `result()` is their quotient.

    An update may declare tensors `withheld` (a jurisdiction whose policy keeps a layer local):
    each tensor is then the weighted mean of the updates that carry it, and a tensor nobody
    sent comes out as zeros, so adding the result to a model leaves that tensor unchanged.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._sums: Weights = spec.zeros()
        self._scratch: FloatArray = np.empty(_BLOCK_ELEMENTS, dtype=np.float32)
        self._contributors = 0
        self._total_weight = 0.0
        self._tensor_weights = dict.fromkeys(self._sums, 0.0)

    @property
    def contributors(self) -> int:
        return self._contributors

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def add(
        self, update: Mapping[str, FloatArray], weight: float, *, withheld: frozenset[str] = frozenset()
    ) -> None:
        """Fold `weight * update` in; InvalidInput, and nothing changes, if either is malformed.

        Values are not checked for NaN or infinity here: that belongs where updates are decoded.
        """
        if not math.isfinite(weight) or weight <= 0:
            raise InvalidInput(f"update weight must be finite and positive, got {weight}")
        carried = self._spec.without(withheld)
        if not carried.tensors:
            raise InvalidInput("an update must carry at least one tensor")
        carried.check(update)
        for tensor in carried.tensors:
            self._fold(self._sums[tensor.name].reshape(-1), _flat(update[tensor.name]), weight)
            self._tensor_weights[tensor.name] += float(weight)
        self._contributors += 1
        self._total_weight += float(weight)

    def result(self) -> Weights:
        """The weighted mean as new arrays; WrongState before the first `add`."""
        if self._contributors == 0:
            raise WrongState("no update has been added, so there is no mean yet")
        return {
            name: np.divide(sums, np.float32(self._tensor_weights[name]), dtype=np.float32)
            if self._tensor_weights[name] > 0
            else np.zeros_like(sums)
            for name, sums in self._sums.items()
        }

    def _fold(self, sums: FloatArray, values: FloatArray, weight: float) -> None:
        for start in range(0, values.size, _BLOCK_ELEMENTS):
            stop = min(start + _BLOCK_ELEMENTS, values.size)
            scratch = self._scratch[: stop - start]
            np.multiply(values[start:stop], weight, out=scratch)
            np.add(sums[start:stop], scratch, out=sums[start:stop])


def _flat(values: FloatArray) -> FloatArray:
    """A 1-D view of `values`; a non-contiguous array (rare: decoded updates are contiguous) is copied."""
    flat: FloatArray = np.ascontiguousarray(values).reshape(-1)
    return flat
