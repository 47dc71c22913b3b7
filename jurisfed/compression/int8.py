"""Unbiased 8-bit stochastic quantization, with one scale per tensor or one per block of values.

A value x becomes q = floor(x / scale) + 1 with probability frac(x / scale), else
floor(x / scale), clipped to [-127, 127], with scale = max|x| / 127 over the tensor (quantize)
or over each block of `block_size` consecutive values (quantize_blocks; the last block may be
shorter). Then E[q * scale] = x and |q * scale - x| < scale: the error of each value is below
one quantization step of its own scale, and averages out over draws. A block of small values
next to a block of large ones keeps its own fine step, which a per-tensor scale would lose.
(The shorter floor(x / scale + u), u ~ U[0, 1), breaks the bound in float32: when x / scale is
a level k and u is near 1, k + u rounds up to k + 1, a whole step away.)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from jurisfed.tensors import FloatArray

Int8Array = npt.NDArray[np.int8]
LEVELS = 127
MAX_BLOCK_SIZE = 1 << 16
# Values quantized per piece: 256 KiB of float32 per scratch buffer, which stays in cache.
_PIECE_VALUES = 1 << 16


def quantize(values: FloatArray, rng: np.random.Generator) -> tuple[Int8Array, float]:
    """Return (quantized values, scale). An all-zero or empty tensor gets scale 0."""
    peak = max(float(values.max()), -float(values.min())) if values.size else 0.0
    scale = np.float32(peak / LEVELS)
    if scale == 0.0:
        return np.zeros(values.shape, dtype=np.int8), 0.0
    quantized = _round_stochastically(values.reshape(-1), np.array([scale]), values.size, rng)
    return quantized.reshape(values.shape), float(scale)


def dequantize(quantized: Int8Array, scale: float) -> FloatArray:
    result: FloatArray = quantized.astype(np.float32)
    result *= np.float32(scale)
    return result


def block_count(size: int, block_size: int) -> int:
    """Blocks of `block_size` values that `size` values make, the last one possibly shorter."""
    return -(-size // block_size)


def quantize_blocks(
    values: FloatArray, block_size: int, rng: np.random.Generator
) -> tuple[Int8Array, FloatArray]:
    """Return (flat quantized values, one float32 scale per block) for a tensor, flattened.

    Block j holds values[j * block_size : (j + 1) * block_size]; an all-zero block gets
    scale 0 and quantizes to zeros.
    """
    _check_block_size(block_size)
    flat = values.reshape(-1)
    scales: FloatArray = np.empty(block_count(flat.size, block_size), dtype=np.float32)
    for rows, blocks in _blocks(flat, block_size):
        peak = np.maximum(blocks.max(axis=1), -blocks.min(axis=1))
        np.divide(peak, LEVELS, out=scales[rows], casting="same_kind")
    return _round_stochastically(flat, scales, block_size, rng), scales


def dequantize_blocks(quantized: Int8Array, scales: FloatArray, block_size: int) -> FloatArray:
    """The flat float32 values of quantize_blocks' output."""
    _check_block_size(block_size)
    flat = quantized.reshape(-1)
    if scales.size != block_count(flat.size, block_size):
        raise ValueError(f"{scales.size} scales for {flat.size} values in blocks of {block_size}")
    result: FloatArray = np.empty(flat.size, dtype=np.float32)
    dequantize_blocks_into(flat, scales, block_size, result)
    return result


def dequantize_blocks_into(
    quantized: Int8Array, scales: FloatArray, block_size: int, out: FloatArray
) -> None:
    """Write the float32 values of flat `quantized` into `out` (same size), without temporaries.

    The caller has checked that `scales` holds one scale per block of `block_size` values.
    """
    quantized_blocks = _blocks(quantized, block_size)
    for (rows, blocks), (_, out_blocks) in zip(quantized_blocks, _blocks(out, block_size), strict=True):
        np.multiply(blocks, scales[rows, None], out=out_blocks)


_ArrayT = npt.NDArray[np.generic]


def _blocks(flat: _ArrayT, block_size: int) -> list[tuple[slice, _ArrayT]]:
    """A flat array as (block numbers, 2-D view one block a row): the full blocks, then the tail."""
    full = flat.size // block_size
    cut = full * block_size
    views = [(slice(0, full), flat[:cut].reshape(full, block_size))]
    if cut < flat.size:
        views.append((slice(full, full + 1), flat[cut:].reshape(1, -1)))
    return views


def _round_stochastically(
    flat: FloatArray, scales: FloatArray, block_size: int, rng: np.random.Generator
) -> Int8Array:
    """Quantize flat values, one scale per block of `block_size` (a zero scale: a zero block).

    Works through cache-sized pieces, whole blocks each, with reused scratch buffers: ~2.5x
    faster than whole-array temporaries, and the same draws as one rng.random call would give.
    """
    result: Int8Array = np.empty(flat.size, dtype=np.int8)
    # A zero scale is a block of zeros: dividing them by 1 keeps them zero.
    divisors = np.where(scales > 0, scales, np.float32(1)).astype(np.float32)
    per_piece = max(1, min(flat.size, _PIECE_VALUES // block_size * block_size or _PIECE_VALUES))
    scaled = np.empty(per_piece, dtype=np.float32)
    levels = np.empty(per_piece, dtype=np.float32)
    draws = np.empty(per_piece, dtype=np.float32)
    up = np.empty(per_piece, dtype=np.bool_)
    for start in range(0, flat.size, per_piece):
        values = flat[start : start + per_piece]
        count = values.size
        if divisors.size == 1:
            np.divide(values, divisors[0], out=scaled[:count])
        else:
            piece_divisors = divisors[start // block_size :]
            value_blocks, scaled_blocks = _blocks(values, block_size), _blocks(scaled[:count], block_size)
            for (rows, blocks), (_, out) in zip(value_blocks, scaled_blocks, strict=True):
                np.divide(blocks, piece_divisors[rows, None], out=out)
        np.floor(scaled[:count], out=levels[:count])
        # The fraction in [0, 1], exactly 0 for an x on a level: it stays there.
        np.subtract(scaled[:count], levels[:count], out=scaled[:count])
        rng.random(dtype=np.float32, out=draws[:count])
        np.less(draws[:count], scaled[:count], out=up[:count])
        np.add(levels[:count], up[:count], out=levels[:count])
        np.clip(levels[:count], -LEVELS, LEVELS, out=levels[:count])
        result[start : start + count] = levels[:count]
    return result


def _check_block_size(block_size: int) -> None:
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be from 1 to {MAX_BLOCK_SIZE}, got {block_size}")
