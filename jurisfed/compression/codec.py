"""How a hop encodes tensors (a Codec, named by the round's contract) and what it produces.

Five codecs, each a wire encoding of its own (docs/wire-format.md):

  raw          float32 values as they are (4 bytes a value)
  int8         stochastic int8, one scale per tensor (1 byte a value)
  int8-blocks  stochastic int8, one scale per block of `block_size` values (1 + 4/block_size)
  top-k        the `density` fraction of values of largest magnitude, with their positions
               (8 bytes a kept value)
  top-k-int8   top-k, the kept values as int8 with one scale per block of them (5 + 4/block_size)

The quantizing codecs are unbiased. Top-k is not: pair it with ErrorFeedback at the sender.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from jurisfed.compression import int8, topk
from jurisfed.compression.int8 import Int8Array
from jurisfed.compression.topk import UInt32Array
from jurisfed.tensors import FloatArray

DEFAULT_BLOCK_SIZE = 256
_NO_SCALES: FloatArray = np.empty(0, dtype=np.float32)
_FLOAT_DTYPE = np.dtype("<f4")


class CodecKind(enum.Enum):
    RAW = "raw"
    INT8 = "int8"
    INT8_BLOCKS = "int8-blocks"
    TOP_K = "top-k"
    TOP_K_INT8 = "top-k-int8"

    @property
    def sparse(self) -> bool:
        return self in (CodecKind.TOP_K, CodecKind.TOP_K_INT8)

    @property
    def blocked(self) -> bool:
        return self in (CodecKind.INT8_BLOCKS, CodecKind.TOP_K_INT8)

    @property
    def stochastic(self) -> bool:
        return self in (CodecKind.INT8, CodecKind.INT8_BLOCKS, CodecKind.TOP_K_INT8)


@dataclass(frozen=True)
class Codec:
    """One hop's encoding. `density` applies to the top-k kinds, `block_size` to the blocked ones.

    Settings a kind does not use must keep their defaults, so one codec has one spelling.
    """

    kind: CodecKind
    density: float = 1.0
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.kind.sparse:
            if not 0.0 < self.density <= 1.0:
                raise ValueError(f"{self.kind.value}: density must be in (0, 1], got {self.density}")
        elif self.density != 1.0:
            raise ValueError(f"{self.kind.value} keeps every value; density must stay 1.0")
        if self.kind.blocked:
            if not 1 <= self.block_size <= int8.MAX_BLOCK_SIZE:
                raise ValueError(
                    f"{self.kind.value}: block_size must be from 1 to {int8.MAX_BLOCK_SIZE}, "
                    f"got {self.block_size}"
                )
        elif self.block_size != DEFAULT_BLOCK_SIZE:
            raise ValueError(f"{self.kind.value} has no blocks; block_size must stay {DEFAULT_BLOCK_SIZE}")

    @classmethod
    def named(cls, kind: str, *, density: float | None = None, block_size: int | None = None) -> Codec:
        """The codec a configuration names: raw, int8, int8-blocks, top-k or top-k-int8.

        Settings left None take their defaults; ValueError for an unknown kind, or a setting
        the kind does not use or out of range.
        """
        try:
            parsed = CodecKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in CodecKind)
            raise ValueError(f"codec {kind!r} is unknown; one of {known}") from None
        return cls(
            parsed,
            density=1.0 if density is None else density,
            block_size=DEFAULT_BLOCK_SIZE if block_size is None else block_size,
        )

    def kept_count(self, size: int) -> int:
        """Values of a `size`-value tensor this codec sends."""
        return topk.kept_count(size, self.density) if self.kind.sparse else size

    def encode(self, values: FloatArray, rng: np.random.Generator | None = None) -> EncodedTensor:
        """Encode a tensor (flattened in row-major order). `rng` draws the stochastic rounding
        of the int8 kinds, which need it."""
        if self.kind.stochastic and rng is None:
            raise ValueError(f"{self.kind.value} rounds stochastically: pass rng")
        flat = np.ascontiguousarray(values, dtype=_FLOAT_DTYPE).reshape(-1)
        size = flat.size
        indices: UInt32Array | None = None
        if self.kind.sparse:
            indices = topk.top_k(flat, self.kept_count(size))
            flat = flat[indices]
        if self.kind in (CodecKind.RAW, CodecKind.TOP_K):
            return EncodedTensor(self, size, flat, indices=indices)
        assert rng is not None
        if self.kind is CodecKind.INT8:
            quantized, scale = int8.quantize(flat, rng)
            return EncodedTensor(self, size, quantized, scales=np.array([scale], dtype=_FLOAT_DTYPE))
        quantized, scales = int8.quantize_blocks(flat, self.block_size, rng)
        return EncodedTensor(self, size, quantized, indices=indices, scales=scales)


@dataclass(frozen=True, eq=False)
class EncodedTensor:
    """One tensor as a codec encoded it: what goes on the wire, before it is cut into chunks.

    values: the dense values (or, sparse, the kept ones, in index order), float32 or int8.
    indices: sparse only: the ascending positions of `values` in the flattened tensor.
    scales: int8: the one scale; blocked: one per block of `codec.block_size` values.
    """

    codec: Codec
    size: int
    values: FloatArray | Int8Array
    indices: UInt32Array | None = None
    scales: FloatArray = field(default_factory=lambda: _NO_SCALES)

    def __post_init__(self) -> None:
        kind = self.codec.kind
        expected = self.codec.kept_count(self.size)
        if self.values.ndim != 1 or self.values.size != expected:
            raise ValueError(f"{kind.value}: {self.values.size} values for {expected} expected")
        if (self.indices is not None) != kind.sparse:
            raise ValueError(f"{kind.value}: indices must be given exactly for sparse codecs")
        if self.indices is not None and self.indices.shape != self.values.shape:
            raise ValueError(f"{kind.value}: {self.indices.size} indices for {self.values.size} values")
        scale_count = {CodecKind.INT8: 1}.get(kind, 0)
        if kind.blocked:
            scale_count = int8.block_count(expected, self.codec.block_size)
        if self.scales.shape != (scale_count,):
            raise ValueError(f"{kind.value}: {self.scales.size} scales, expected {scale_count}")

    @property
    def payload_bytes(self) -> int:
        """Bytes of values, indices and scales: what the chunks' data fields carry."""
        indices = 0 if self.indices is None else self.indices.nbytes
        return self.values.nbytes + indices + self.scales.nbytes

    def decoded_values(self) -> FloatArray:
        """`values` as float32: the dense tensor, or (sparse) the kept values in index order."""
        kind = self.codec.kind
        if kind is CodecKind.INT8:
            return int8.dequantize(self.values.astype(np.int8, copy=False), float(self.scales[0]))
        if kind.blocked:
            return int8.dequantize_blocks(
                self.values.astype(np.int8, copy=False), self.scales, self.codec.block_size
            )
        return self.values.astype(np.float32, copy=False)

    def decode(self) -> FloatArray:
        """The flat float32 tensor the receiver reconstructs (zeros where top-k dropped values)."""
        if self.indices is None:
            return self.decoded_values()
        dense: FloatArray = np.zeros(self.size, dtype=np.float32)
        dense[self.indices] = self.decoded_values()
        return dense
