"""Error feedback: the sender keeps what its codec did not send and sends it in later rounds.

Each round, compress(delta) encodes delta + residual and keeps as the new residual what the
receiver will not reconstruct: (delta + residual) - decoded. So after any number of rounds,

    sum of what the receiver decoded == sum of the deltas - the current residual,

and since top-k always sends the largest values, the residual stays bounded: the decoded sum
tracks the true sum, where top-k alone would drop the same small values round after round and
drift ever further from it (Stich 2018; Karimireddy et al. 2019).

The residual belongs to the sender and never leaves it. state() and load() exchange it as
plain float32 arrays, one per tensor, so the owner can persist it (atomically, next to its
round state) and restore it after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from jurisfed.compression.codec import Codec, EncodedTensor
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, Weights


class ErrorFeedback:
    """The per-tensor residual of one sender on one hop, initially zero."""

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._residual: dict[str, FloatArray] = {
            tensor.name: np.zeros(tensor.size, dtype=np.float32) for tensor in spec.tensors
        }
        # One spare buffer per tensor, swapped with the residual each round: a fresh buffer of
        # model size per round would cost page faults that take longer than the arithmetic.
        self._spare: dict[str, FloatArray | None] = dict.fromkeys(self._residual)

    def compress(
        self, delta: Mapping[str, FloatArray], codec: Codec, rng: np.random.Generator | None = None
    ) -> dict[str, EncodedTensor]:
        """Encode delta + residual tensor by tensor (spec order); keep what was not sent.

        InvalidInput when `delta` does not match the spec or holds non-finite values; the
        residual changes only when every tensor was encoded.
        """
        self._spec.check(delta)
        targets: dict[str, FloatArray] = {}
        for tensor in self._spec.tensors:
            spare = self._spare[tensor.name]
            target = spare if spare is not None else np.empty(tensor.size, dtype=np.float32)
            np.add(delta[tensor.name].reshape(-1), self._residual[tensor.name], out=target)
            _check_finite(f"tensor {tensor.name!r}", "delta + residual", target)
            targets[tensor.name] = target
        encoded: dict[str, EncodedTensor] = {}
        residuals: dict[str, FloatArray] = {}
        spares: dict[str, FloatArray | None] = {}
        for name, target in targets.items():
            sent = codec.encode(target, rng)
            if np.may_share_memory(sent.values, target):
                # A lossless codec sends `target` itself: nothing is left, and the buffer is the
                # caller's now.
                residuals[name], spares[name] = np.zeros_like(target), None
            else:
                if sent.indices is None:
                    np.subtract(target, sent.decoded_values(), out=target)
                else:
                    target[sent.indices] -= sent.decoded_values()
                residuals[name], spares[name] = target, self._residual[name]
            encoded[name] = sent
        self._residual, self._spare = residuals, spares
        return encoded

    def add_back(self, sent: Mapping[str, EncodedTensor]) -> None:
        """What compress() returned was never delivered: keep all of it for a later round."""
        for name, tensor in sent.items():
            residual = self._residual[name]
            if tensor.size != residual.size:
                raise ValueError(
                    f"tensor {name!r}: {tensor.size} values sent, residual holds {residual.size}"
                )
            if tensor.indices is None:
                residual += tensor.decoded_values()
            else:
                residual[tensor.indices] += tensor.decoded_values()

    @property
    def residual_norm(self) -> float:
        """L2 norm of the whole residual: how much the receiver has yet to see."""
        return math.sqrt(sum(float(np.dot(r, r)) for r in self._residual.values()))

    def state(self) -> Weights:
        """A copy of the residual, one float32 array per tensor in spec order and shape."""
        return {t.name: self._residual[t.name].reshape(t.shape).copy() for t in self._spec.tensors}

    def load(self, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Replace the residual with `state` (as state() returned it, e.g. read back from disk).

        InvalidInput naming the tensor when `state` does not match the spec or is not finite;
        then nothing changes.
        """
        expected = [t.name for t in self._spec.tensors]
        if sorted(state) != sorted(expected):
            raise InvalidInput(f"residual tensors {sorted(state)} do not match the model's {expected}")
        loaded: dict[str, FloatArray] = {}
        for tensor in self._spec.tensors:
            array = state[tensor.name]
            where = f"residual of tensor {tensor.name!r}"
            if array.shape != tensor.shape or array.dtype != np.float32:
                raise InvalidInput(
                    f"{where} is {array.dtype}{list(array.shape)}, expected float32{list(tensor.shape)}"
                )
            values = np.array(array, dtype=np.float32).reshape(-1)
            _check_finite(where, "the residual", values)
            loaded[tensor.name] = values
        self._residual = loaded
        self._spare = dict.fromkeys(loaded)


def _check_finite(where: str, what: str, values: FloatArray) -> None:
    # One pass without a temporary: any NaN or Inf makes the dot product non-finite, and so do
    # values whose squares overflow float32 (|x| > 1.8e19), which no model update has.
    if not math.isfinite(np.dot(values, values)):
        raise InvalidInput(f"{where}: {what} holds NaN or infinite values, or values overflowing float32")
