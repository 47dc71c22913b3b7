"""Run jurisfed's benchmarks one after another and print what they print (`make bench`).

Every bench/bench_*.py is a benchmark; each runs in a process of its own, with this Python,
and its output goes straight to this terminal:

  bench_aggregation.py  weighted-mean folding and int8 codec throughput (GB/s)
  bench_codecs.py       every codec's encode/decode throughput (GB/s), bytes on the wire, hostile
                        compressed payloads refused (counted), error feedback's effect over rounds
  bench_ingest.py       silo -> regional ingest over mTLS gRPC against a raw byte sink (MB/s,
                        ratio), and a regional's peak RSS with 10 vs 100 silo updates

Benchmarks print numbers for people and never assert on timings. This runner exits non-zero
only when a benchmark crashes (exits non-zero itself), after running all the others.
Run one benchmark with its own options directly, e.g. `python bench/bench_ingest.py --help`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def benchmarks() -> list[Path]:
    return sorted(BENCH_DIR.glob("bench_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="run only these benchmarks (e.g. ingest or bench_ingest.py); default: all",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()

    found = benchmarks()
    if args.list:
        for path in found:
            print(path.name)
        return 0
    chosen = [path for path in found if not args.names or _matches(path, args.names)]
    unknown = [name for name in args.names if not any(_matches(path, [name]) for path in found)]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; known: {', '.join(p.name for p in found)}")

    crashed: list[str] = []
    started = time.perf_counter()
    for path in chosen:
        print(f"=== {path.name}", flush=True)
        begun = time.perf_counter()
        code = subprocess.run([sys.executable, str(path)], check=False).returncode
        took = time.perf_counter() - begun
        if code:
            crashed.append(path.name)
            print(f"=== {path.name} CRASHED (exit code {code}) after {took:.0f} s\n", flush=True)
        else:
            print(f"=== {path.name} done in {took:.0f} s\n", flush=True)
    total = time.perf_counter() - started
    if crashed:
        print(f"{len(crashed)} of {len(chosen)} benchmarks crashed: {', '.join(crashed)} ({total:.0f} s)")
        return 1
    print(f"{len(chosen)} benchmarks ran in {total:.0f} s")
    return 0


def _matches(path: Path, names: list[str]) -> bool:
    return any(name in (path.name, path.stem, path.stem.removeprefix("bench_")) for name in names)


if __name__ == "__main__":
    sys.exit(main())
