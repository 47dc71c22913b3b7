"""Timing shared by the benchmarks (bench/ is on sys.path when a benchmark runs as a script)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` runs after one warm-up run (which faults the pages in)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
