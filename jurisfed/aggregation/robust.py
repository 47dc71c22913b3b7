"""Coordinate-wise median and trimmed mean of N updates, computed block by block.

Both rules are order statistics, so every update must be at hand, but the working memory is
one block: the N values of a range of coordinates are ordered and the wanted ranks written
out, then the next range. A rule that receives updates one at a time keeps them in an
`UpdateStack`, laid out for how they will be read (N separate arrays work as well).

How a block is ordered depends on N (bench/bench_robust.py has the numbers):
  - N <= NETWORK_MAX_UPDATES: a sorting network over the (N, w) block, one row per update,
    each comparator one np.minimum and one np.maximum over w coordinates; comparators that
    cannot reach the wanted ranks are pruned, and a trimmed mean with few trimmed values per
    side just bubbles the extremes out instead of sorting.
  - larger N: the block is copied transposed into (w, N), one contiguous row per coordinate
    (an UpdateStack already holds it so), and the rows are sorted by numpy's SIMD sort, which
    beats np.median's strided partition.
Results equal np.median(axis=0) exactly and scipy.stats.trim_mean(axis=0) up to float32
rounding of the sum. Values must be finite: NaN or infinity is refused, never aggregated.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray

# Working memory of one block, the N values of a range of coordinates.
BLOCK_BYTES = 512 * 1024
# Up to this many updates a sorting network orders a block; above it rows are sorted.
NETWORK_MAX_UPDATES = 24
_MIN_BLOCK_COORDINATES = 1024
MAX_BLOCK_COORDINATES = 16384  # a block never spans more coordinates than this
# Row padding of a row-major UpdateStack: one cache line, so rows never share 4 KiB offsets.
_PAD_FLOATS = 16
# Updates transposed together into an UpdateStack: one 64-byte cache line of float32.
_GROUP = 16

Comparators = tuple[tuple[int, int], ...]


class UpdateStack:
    """N flattened updates of `size` floats, copied in as they arrive; grows when full.

    Laid out for the way the rules will read it. Up to NETWORK_MAX_UPDATES: one padded row per
    update, as the network reads rows. Above: transposed, one row of N values per coordinate,
    as the sort reads them, so closing the round only sorts. Updates are transposed in groups
    of 16 (one cache line of floats per coordinate), because writing one update's column
    alone would touch a cache line per coordinate. `capacity` is the expected N.
    """

    def __init__(self, size: int, capacity: int = 8) -> None:
        self.size = size
        self.transposed = capacity > NETWORK_MAX_UPDATES
        self._count = 0
        self._flushed = 0  # transposed: updates already written into their columns
        if self.transposed:
            groups = -(-capacity // _GROUP)
            self._buffer: FloatArray = np.empty((size, groups * _GROUP), dtype=np.float32)
            self._group: FloatArray = np.empty((_GROUP, size + _PAD_FLOATS), dtype=np.float32)
        else:
            self._buffer = np.empty((max(1, capacity), size + _PAD_FLOATS), dtype=np.float32)

    def __len__(self) -> int:
        return self._count

    def rows(self) -> FloatArray:
        """The updates so far as an (N, size) view, no copy (strided when transposed)."""
        if not self.transposed:
            return self._buffer[: self._count, : self.size]
        self._flush()
        return self._buffer[:, : self._count].T

    def append(self, values: FloatArray) -> None:
        """Copy one update in (any shape holding `size` float32 values)."""
        if values.size != self.size or values.dtype != np.float32:
            raise InvalidInput(f"update is {values.dtype}[{values.size}], expected float32[{self.size}]")
        flat = values.reshape(-1)
        if not self.transposed:
            if self._count == len(self._buffer):
                self._buffer = _grown(self._buffer, self._count, axis=0)
            self._buffer[self._count, : self.size] = flat
            self._count += 1
            return
        if self._count == self._buffer.shape[1]:
            self._flush()
            self._buffer = _grown(self._buffer, self._count, axis=1)
        self._group[self._count % _GROUP, : self.size] = flat
        self._count += 1
        if self._count % _GROUP == 0:
            self._flush()

    def _flush(self) -> None:
        """Write the staged group (full or not) into its columns, a block of coordinates at a time."""
        first = self._count - (self._count - 1) % _GROUP - 1 if self._count else 0
        staged = self._count - first
        if self._flushed == self._count or not staged:
            return
        for start in range(0, self.size, MAX_BLOCK_COORDINATES):
            stop = min(start + MAX_BLOCK_COORDINATES, self.size)
            self._buffer[start:stop, first : self._count] = self._group[:staged, start:stop].T
        self._flushed = self._count


def _grown(buffer: FloatArray, count: int, axis: int) -> FloatArray:
    shape = list(buffer.shape)
    shape[axis] *= 2
    grown: FloatArray = np.empty(tuple(shape), dtype=np.float32)
    if axis == 0:
        grown[:count] = buffer[:count]
    else:
        grown[:, :count] = buffer[:, :count]
    return grown


Updates = UpdateStack | Sequence[FloatArray]


def coordinate_median(updates: Updates) -> FloatArray:
    """The median of each coordinate, as np.median(axis=0): the middle value, or the mean of two."""
    count, shape = _check(updates)
    ranks = (count // 2,) if count % 2 else (count // 2 - 1, count // 2)
    network = sorting_network(count, ranks) if count <= NETWORK_MAX_UPDATES else ()
    return _mean_of_ranks(updates, count, ranks, network).reshape(shape)


def trimmed_mean(updates: Updates, trim_fraction: float) -> FloatArray:
    """Mean of each coordinate without its `trimmed_per_side` smallest and largest values.

    The same cut as scipy.stats.trim_mean(updates, trim_fraction, axis=0).
    """
    count, shape = _check(updates)
    cut = trimmed_per_side(count, trim_fraction)
    ranks = tuple(range(cut, count - cut))
    network: Comparators = ()
    if count <= NETWORK_MAX_UPDATES:
        network = min(sorting_network(count, ranks), extremes_network(count, cut), key=len)
    return _mean_of_ranks(updates, count, ranks, network).reshape(shape)


def trimmed_per_side(count: int, trim_fraction: float) -> int:
    """How many values are dropped at each end: int(trim_fraction * count), as scipy does."""
    if not 0.0 <= trim_fraction < 0.5:
        raise InvalidInput(f"trim fraction must be in [0, 0.5), got {trim_fraction}")
    return int(trim_fraction * count)


def _check(updates: Updates) -> tuple[int, tuple[int, ...]]:
    if isinstance(updates, UpdateStack):
        if not len(updates):
            raise InvalidInput("a robust rule needs at least one update")
        return len(updates), (updates.size,)
    if not updates:
        raise InvalidInput("a robust rule needs at least one update")
    shape = updates[0].shape
    for index, update in enumerate(updates):
        if update.shape != shape or update.dtype != np.float32:
            raise InvalidInput(
                f"update {index} is {update.dtype}{list(update.shape)}, expected float32{list(shape)}"
            )
    return len(updates), shape


def _mean_of_ranks(updates: Updates, count: int, ranks: tuple[int, ...], network: Comparators) -> FloatArray:
    """Per coordinate, the mean of the values whose sorted positions are `ranks`."""
    if isinstance(updates, UpdateStack):
        rows: FloatArray | list[FloatArray] = updates.rows()
        size = updates.size
    else:
        rows = [np.ascontiguousarray(update).reshape(-1) for update in updates]
        size = rows[0].size
    out: FloatArray = np.empty(size, dtype=np.float32)
    if size == 0:
        return out
    if count <= NETWORK_MAX_UPDATES:
        _by_network(rows, count, ranks, network, out)
    else:
        _by_sorted_rows(rows, count, ranks, out)
    return out


def _by_network(
    source: FloatArray | list[FloatArray],
    count: int,
    ranks: tuple[int, ...],
    network: Comparators,
    out: FloatArray,
) -> None:
    size = out.size
    width = int(np.clip(BLOCK_BYTES // (4 * count), _MIN_BLOCK_COORDINATES, MAX_BLOCK_COORDINATES))
    width = min(width, size)
    block: FloatArray = np.empty((count, width + _PAD_FLOATS), dtype=np.float32)
    spare: FloatArray = np.empty(width, dtype=np.float32)
    finite: npt.NDArray[np.bool_] = np.empty((count, width), dtype=np.bool_)
    for start in range(0, size, width):
        stop = min(start + width, size)
        span = stop - start
        _fill(block[:, :span], source, start, stop)
        _require_finite(bool(np.isfinite(block[:, :span], out=finite[:, :span]).all()), start)
        rows = [block[i, :span] for i in range(count)]
        scratch = spare[:span]
        for low, high in network:  # low <- min, high <- max; the old low row becomes scratch
            np.minimum(rows[low], rows[high], out=scratch)
            np.maximum(rows[low], rows[high], out=rows[high])
            rows[low], scratch = scratch, rows[low]
        _mean_of_rows([rows[rank] for rank in ranks], out[start:stop])


def _by_sorted_rows(
    source: FloatArray | list[FloatArray], count: int, ranks: tuple[int, ...], out: FloatArray
) -> None:
    size = out.size
    height = min(max(_MIN_BLOCK_COORDINATES, BLOCK_BYTES // (4 * count)), size)
    block: FloatArray = np.empty((height, count), dtype=np.float32)
    first, last = ranks[0], ranks[-1] + 1
    ones: FloatArray = np.ones(last - first, dtype=np.float32)
    for start in range(0, size, height):
        stop = min(start + height, size)
        rows = block[: stop - start]
        _fill(rows.T, source, start, stop)
        rows.sort(axis=1)  # NaN sorts last: the two end columns tell whether the block is finite
        _require_finite(bool(np.isfinite(rows[:, 0]).all() and np.isfinite(rows[:, -1]).all()), start)
        if last - first == 1:
            out[start:stop] = rows[:, first]
        elif last - first == 2:
            np.add(rows[:, first], rows[:, first + 1], out=out[start:stop])
            out[start:stop] *= np.float32(0.5)
        else:  # a matrix-vector product sums the middle columns faster than np.add.reduce
            np.dot(rows[:, first:last], ones, out=out[start:stop])
            out[start:stop] /= np.float32(last - first)


def _fill(target: FloatArray, source: FloatArray | list[FloatArray], start: int, stop: int) -> None:
    """Copy coordinates [start, stop) of every update into `target` (N, stop - start).

    Separate arrays are copied one at a time, so each is read sequentially even when `target`
    is a transposed view; a stack is copied in one call, in whichever layout it holds.
    """
    if isinstance(source, np.ndarray):
        np.copyto(target, source[:, start:stop])
    else:
        for row, values in zip(target, source, strict=True):
            row[...] = values[start:stop]


def _mean_of_rows(rows: list[FloatArray], out: FloatArray) -> None:
    out[...] = rows[0]
    for row in rows[1:]:
        np.add(out, row, out=out)
    if len(rows) == 2:
        out *= np.float32(0.5)  # as np.median: (a + b) / 2 in float32
    elif len(rows) > 2:
        out /= np.float32(len(rows))


def _require_finite(finite: bool, start: int) -> None:
    if not finite:
        raise InvalidInput(f"an update holds NaN or infinity near coordinate {start}")


@lru_cache(maxsize=256)
def sorting_network(count: int, ranks: tuple[int, ...]) -> Comparators:
    """Batcher's odd-even merge sort on `count` wires, pruned to what reaches `ranks`.

    Built for the next power of two; comparators touching a wire >= count are dropped (those
    wires would hold +inf, which no comparator moves). Then, walking backwards from the
    wanted output wires, only comparators that feed a needed wire are kept.
    """
    size = 1
    while size < count:
        size *= 2
    full: list[tuple[int, int]] = []
    span = 1
    while span < size:
        step = span
        while step >= 1:
            for group in range(step % span, size - step, 2 * step):
                for offset in range(min(step, size - group - step)):
                    low, high = offset + group, offset + group + step
                    if low // (2 * span) == high // (2 * span):
                        full.append((low, high))
            step //= 2
        span *= 2
    needed = set(ranks)
    kept: list[tuple[int, int]] = []
    for low, high in reversed([pair for pair in full if pair[1] < count]):
        if low in needed or high in needed:
            kept.append((low, high))
            needed.update((low, high))
    return tuple(reversed(kept))


@lru_cache(maxsize=256)
def extremes_network(count: int, cut: int) -> Comparators:
    """Bubbles the `cut` largest values to the last wires and the `cut` smallest to the first.

    Wires cut .. count-cut-1 then hold the middle values (as a set, not sorted), which is all
    a trimmed mean needs: about 4 * cut * count comparisons instead of a full sort.
    """
    pairs: list[tuple[int, int]] = []
    for done in range(cut):
        pairs += [(i, i + 1) for i in range(count - 1 - done)]
    for done in range(cut):
        pairs += [(i - 1, i) for i in range(count - 1 - cut, done, -1)]
    return tuple(pairs)
