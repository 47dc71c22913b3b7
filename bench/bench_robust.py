"""Throughput of the robust rules: coordinate-wise median and trimmed mean of N updates.

Prints GB/s of update bytes read (N * P * 4 bytes; best of --repeats runs after a warm-up) for
  - jurisfed.aggregation.robust.coordinate_median and .trimmed_mean (blocks of coordinates,
    sorting network for small N, sorted transposed rows above it), reading the updates from
    N separate arrays (the whole cost) and from an UpdateStack (how the median/trimmed-mean
    rules hold updates: above NETWORK_MAX_UPDATES it transposes each update as it arrives,
    so closing the round only sorts); UpdateStack.append of the N updates is timed apart,
  - np.median(axis=0) and scipy.stats.trim_mean(axis=0) on the same updates already stacked
    into one (N, P) array (stacking is not timed for any case).
Single-threaded (BLAS pinned to one thread), so the numbers are per core.
No assertions: the numbers are for people, to compare with REFERENCE.md (> 1 GB/s at N <= 100).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import scipy.stats
from threadpoolctl import threadpool_limits
from timing import best_seconds  # bench/ is on sys.path

from jurisfed.aggregation.robust import NETWORK_MAX_UPDATES, UpdateStack, coordinate_median, trimmed_mean


def bench(count: int, floats: int, trim: float, repeats: int) -> None:
    rng = np.random.default_rng(count)
    updates = [rng.standard_normal(floats, dtype=np.float32) for _ in range(count)]
    stacked = np.stack(updates)
    stack = UpdateStack(floats, capacity=count)

    def fill_stack() -> None:
        stack.__init__(floats, capacity=count)  # type: ignore[misc]
        for update in updates:
            stack.append(update)

    nbytes = stacked.nbytes
    path = "network" if count <= NETWORK_MAX_UPDATES else "sorted rows"
    layout = "transposed" if count > NETWORK_MAX_UPDATES else "rows"
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"coordinate_median, arrays ({path})", lambda: coordinate_median(updates)),
        (f"trimmed_mean {trim}, arrays ({path})", lambda: trimmed_mean(updates, trim)),
        (f"UpdateStack.append x N ({layout})", fill_stack),
        (f"coordinate_median, stack ({path})", lambda: coordinate_median(stack)),
        (f"trimmed_mean {trim}, stack ({path})", lambda: trimmed_mean(stack, trim)),
        ("np.median(axis=0)", lambda: np.median(stacked, axis=0)),
        (f"scipy.stats.trim_mean {trim}", lambda: scipy.stats.trim_mean(stacked, trim, axis=0)),
    ]
    for name, run in cases:
        seconds = best_seconds(run, repeats)
        print(f"  N={count:<4d} {name:<46s} {nbytes / seconds / 1e9:6.2f} GB/s  ({seconds * 1e3:7.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", default="10,50,100", help="comma-separated N values (default 10,50,100)")
    parser.add_argument("--floats", type=int, default=1 << 20, help="P, floats per update (default 2**20)")
    parser.add_argument(
        "--trim", type=float, default=0.1, help="trimmed-mean fraction per side (default 0.1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per case; best is kept (default 5)"
    )
    args = parser.parse_args()
    print(
        f"robust rules on N updates of {args.floats} float32 ({args.floats * 4 / 1e6:.1f} MB each), 1 thread"
    )
    with threadpool_limits(limits=1):
        for count in (int(n) for n in args.updates.split(",")):
            bench(count, args.floats, args.trim, args.repeats)


if __name__ == "__main__":
    main()
