"""Unbiased 8-bit stochastic quantization with one scale per tensor.

A value x becomes q = floor(x / scale) + 1 with probability frac(x / scale), else
floor(x / scale), clipped to [-127, 127], with scale = max|x| / 127. Then E[q * scale] = x and
|q * scale - x| < scale: the error of each value is below one quantization step, and averages
out over draws. (The shorter floor(x / scale + u), u ~ U[0, 1), breaks the bound in float32:
when x / scale is a level k and u is near 1, k + u rounds up to k + 1, a whole step away.)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from jurisfed.tensors import FloatArray

Int8Array = npt.NDArray[np.int8]
LEVELS = 127


def quantize(values: FloatArray, rng: np.random.Generator) -> tuple[Int8Array, float]:
    """Return (quantized values, scale). An all-zero or empty tensor gets scale 0."""
    peak = max(float(values.max()), -float(values.min())) if values.size else 0.0
    if peak == 0.0:
        return np.zeros(values.shape, dtype=np.int8), 0.0
    scale = np.float32(peak / LEVELS)
    scaled = values / scale
    levels = np.floor(scaled)
    scaled -= levels  # the fraction in [0, 1], exactly 0 for an x on a level: it stays there
    levels += rng.random(values.shape, dtype=np.float32) < scaled
    np.clip(levels, -LEVELS, LEVELS, out=levels)
    return levels.astype(np.int8), float(scale)


def dequantize(quantized: Int8Array, scale: float) -> FloatArray:
    result: FloatArray = quantized.astype(np.float32)
    result *= np.float32(scale)
    return result
