"""Throughput of the regional's hot path: folding updates into a weighted mean, and int8 codec.

Prints GB/s of update bytes read (best of --repeats runs) for:
  - StreamingWeightedMean.add (float32 accumulator, 256 KiB blocks through one scratch buffer),
  - the same blocked loop with a float64 accumulator (the alternative it was chosen over),
  - the naive `acc += w * a`, in float32 and float64 (each allocates a temporary per update),
  - int8 quantize and dequantize of --floats float32 values.
No assertions: the numbers are for people, to compare with REFERENCE.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from timing import best_seconds  # bench/ is on sys.path

from jurisfed.aggregation.streaming_mean import BLOCK_BYTES, StreamingWeightedMean
from jurisfed.compression.int8 import dequantize, quantize
from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec

Float64Array = npt.NDArray[np.float64]
WEIGHT = 0.37


def update_spec(update_mb: float) -> ModelSpec:
    """A dense layer of about `update_mb` MB (10**6 bytes) of float32, plus its bias."""
    width = 1000
    rows = max(1, round(update_mb * 1e6 / 4 / width))
    return ModelSpec("bench", (TensorSpec("kernel", (rows, width)), TensorSpec("bias", (width,))))


def blocked_float64_add(sums: Float64Array, scratch: Float64Array, values: FloatArray, weight: float) -> None:
    for start in range(0, values.size, scratch.size):
        stop = min(start + scratch.size, values.size)
        block = scratch[: stop - start]
        np.multiply(values[start:stop], weight, out=block)
        np.add(sums[start:stop], block, out=sums[start:stop])


def bench_mean(update_mb: float, repeats: int) -> None:
    spec = update_spec(update_mb)
    rng = np.random.default_rng(0)
    update = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors}
    nbytes = spec.float32_bytes

    streaming = StreamingWeightedMean(spec)
    sums64 = {t.name: np.zeros(t.size, dtype=np.float64) for t in spec.tensors}
    scratch64 = np.empty(BLOCK_BYTES // 8, dtype=np.float64)
    naive32 = spec.zeros()
    naive64 = {t.name: np.zeros(t.shape, dtype=np.float64) for t in spec.tensors}

    def add_naive(sums: dict[str, npt.NDArray[np.floating[Any]]]) -> None:
        for name in sums:
            sums[name] += WEIGHT * update[name]

    def add_blocked_float64() -> None:
        for name, acc in sums64.items():
            blocked_float64_add(acc, scratch64, update[name].reshape(-1), WEIGHT)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("StreamingWeightedMean.add (float32, blocked)", lambda: streaming.add(update, WEIGHT)),
        ("float64 accumulator, blocked", add_blocked_float64),
        ("naive float32 acc += w * a", lambda: add_naive(naive32)),
        ("naive float64 acc += w * a", lambda: add_naive(naive64)),
    ]
    print(f"weighted mean, one update of {nbytes / 1e6:.0f} MB, best of {repeats}:")
    for label, run in cases:
        print(f"  {label:<46} {nbytes / best_seconds(run, repeats) / 1e9:6.2f} GB/s")


def bench_int8(floats: int, repeats: int) -> None:
    values = np.random.default_rng(1).standard_normal(floats).astype(np.float32)
    rng = np.random.default_rng(2)
    quantized, scale = quantize(values, rng)
    print(f"int8 codec, {floats / 1e6:.0f}M floats ({values.nbytes / 1e6:.0f} MB), best of {repeats}:")
    for label, run in [
        ("quantize", lambda: quantize(values, rng)),
        ("dequantize", lambda: dequantize(quantized, scale)),
    ]:
        print(f"  {label:<46} {values.nbytes / best_seconds(run, repeats) / 1e9:6.2f} GB/s")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--update-mb", type=float, default=40.0, help="update size in MB (default 40)")
    parser.add_argument("--floats", type=int, default=10_000_000, help="int8 codec input (default 10M)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case; the best counts")
    args = parser.parse_args()
    bench_mean(args.update_mb, args.repeats)
    bench_int8(args.floats, args.repeats)


if __name__ == "__main__":
    main()
