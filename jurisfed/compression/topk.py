"""Top-k sparsification: keep the k values of largest magnitude of a tensor, drop the rest.

k comes from a density in (0, 1]: kept_count(size, density) = max(1, round(density * size)),
at most size, and 0 for an empty tensor. Sender and receiver both compute it from the round's
contract, so a receiver knows exactly how many values each tensor must carry.

Dropping values biases the sum of what is sent; ErrorFeedback (error_feedback.py) keeps what
was dropped and adds it to the next round's update, which removes the bias over rounds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from jurisfed.tensors import FloatArray

UInt32Array = npt.NDArray[np.uint32]
INDEX_DTYPE = np.dtype("<u4")
# Positions travel as uint32: a sparse tensor has at most this many values.
MAX_SPARSE_SIZE = 1 << 32
# Values sampled to estimate the magnitude threshold of a large tensor.
_SAMPLE_SIZE = 1 << 16
# Values scanned per piece for candidates: 256 KiB of float32, which stays in cache.
_PIECE_VALUES = 1 << 16


def kept_count(size: int, density: float) -> int:
    """How many values top-k keeps of a tensor of `size` values at `density`."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if size == 0:
        return 0
    return min(size, max(1, round(density * size)))


def top_k(values: FloatArray, k: int) -> UInt32Array:
    """Ascending positions of the k values of largest magnitude in flat `values`.

    Exact: ties at the k-th magnitude go to the lowest positions, so exactly k come back.
    Large tensors first pick candidates at or above a magnitude estimated from a sample (a
    little below the k-th largest, so that every one of the top k is among them), then select
    exactly among the candidates; when the estimate misses, among all values instead.
    """
    size = values.size
    if not 0 <= k <= size:
        raise ValueError(f"cannot keep {k} of {size} values")
    if size > MAX_SPARSE_SIZE:
        raise ValueError(f"a sparse tensor has at most {MAX_SPARSE_SIZE} values, got {size}")
    if k == size:
        return np.arange(size, dtype=INDEX_DTYPE)
    if k == 0:
        return np.empty(0, dtype=INDEX_DTYPE)
    flat = values.reshape(-1)
    threshold = _estimated_threshold(flat, k)
    if threshold is not None:
        candidates = _at_least(flat, threshold)
        # Fewer than k at or above the estimate: the k-th magnitude is below it, so some of the
        # top k are not candidates. Otherwise all of them are.
        if candidates.size >= k:
            return _select(np.abs(flat[candidates]), candidates, k)
    return _select(np.abs(flat), np.arange(size), k)


def _estimated_threshold(values: FloatArray, k: int) -> np.float32 | None:
    """A magnitude a little below the k-th largest, from an evenly spaced sample; None if small."""
    size = values.size
    if size < 8 * _SAMPLE_SIZE:
        return None
    sample = np.abs(values[:: size // _SAMPLE_SIZE])
    expected = sample.size * k / size  # sampled values expected among the top k
    rank = int(1.3 * expected + 3 * expected**0.5 + 10)  # a margin of several standard deviations
    if rank >= sample.size:
        return None
    return np.float32(np.partition(sample, sample.size - rank)[sample.size - rank])


def _at_least(values: FloatArray, threshold: np.float32) -> npt.NDArray[np.intp]:
    """Ascending positions of the values of magnitude >= threshold, scanned in cache-sized pieces."""
    piece = min(_PIECE_VALUES, values.size)
    magnitude = np.empty(piece, dtype=np.float32)
    above = np.empty(piece, dtype=np.bool_)
    found: list[npt.NDArray[np.intp]] = []
    for start in range(0, values.size, piece):
        count = min(piece, values.size - start)
        np.abs(values[start : start + count], out=magnitude[:count])
        np.greater_equal(magnitude[:count], threshold, out=above[:count])
        positions = np.flatnonzero(above[:count])
        if positions.size:
            found.append(positions + start)
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


def _select(magnitude: FloatArray, positions: npt.NDArray[np.intp], k: int) -> UInt32Array:
    """The k positions of largest magnitude, ascending; `positions` ascending, one per magnitude."""
    threshold = np.partition(magnitude, magnitude.size - k)[magnitude.size - k]
    keep = magnitude > threshold
    ties = np.flatnonzero(magnitude == threshold)[: k - int(np.count_nonzero(keep))]
    keep[ties] = True
    selected: UInt32Array = positions[keep].astype(INDEX_DTYPE)
    return selected
