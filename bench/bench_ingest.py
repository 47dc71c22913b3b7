"""The regional's silo ingest over loopback gRPC with mTLS, against a raw byte sink; its memory.

(a) Throughput: one update of --ingest-floats float32 values (default 25M, 100 MB) sent as
    SubmitUpdate in 1 MiB chunks to the real regional (RegionalAggregator + regional_service
    + serve) and folded into the round's accumulator before the call returns; next to it the
    same messages sent to a byte sink on the same server, which only counts them. The messages
    are encoded and serialized before timing, so the times are transport + ingest, not client
    encoding. Each repetition uses a fresh silo on its own connection, warmed by one untimed
    sink pass; sink and ingest alternate order. Best and median of --repeats.
(b) Memory: peak RSS (VmHWM) of a regional aggregating 10 and then 100 silo updates of
    --rss-floats values (default 10M, 40 MB), each regional a fresh child process; updates
    are sent --concurrency at a time, each silo with its own certificate.

The regional runs in a child process (bench/ingest_server.py), this process is the silos.
No assertions on timings: the numbers are for people, to compare with REFERENCE.md.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ingest_server import JURISDICTION, ROUND, SINK_METHOD, bench_spec  # bench/ is on sys.path

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles, create_ca, issue
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.rpc.channel import open_channel
from jurisfed.tensors import FloatArray
from jurisfed.wire.chunks import MAX_CHUNK_BYTES, encode_tensors
from jurisfed.wire.v1 import regional_pb2, regional_pb2_grpc

SERVER_SCRIPT = Path(__file__).with_name("ingest_server.py")
SUBMIT_METHOD = "/{}/SubmitUpdate".format(
    regional_pb2.DESCRIPTOR.services_by_name["RegionalAggregator"].full_name
)
EXAMPLES = 100
CALL_TIMEOUT_S = 300.0
CHILD_START_S = 120.0
ROUND_CLOSE_S = 300.0
RATIO_TARGET = 0.5
RSS_TARGET = 1.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class RegionalChild:
    """The regional's child process: its address, its /proc status, its stdout lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.address = self.expect("ready", CHILD_START_S).split()[1]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def expect(self, word: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self._lines.empty()):
                raise RuntimeError(
                    f"the regional child did not say {word!r} (exit code {self.process.poll()})"
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line.startswith(word):
                return line

    def cpu_seconds(self) -> float:
        """User + system CPU time of the child so far, all its threads."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def memory_bytes(self, field: str) -> int:
        """VmRSS, VmHWM, ... of the child, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                value, unit = line.split()[1:3]
                assert unit == "kB"
                return int(value) * 1024
        raise RuntimeError(f"/proc/{self.process.pid}/status has no {field}")


@contextmanager
def regional_child(pki: Path, work: Path, floats: int, concurrency: int) -> Iterator[RegionalChild]:
    tls_dir = work / "regional"
    if not tls_dir.exists():
        issue(pki, Identity(JURISDICTION, Tier.REGIONAL, "regional-bench"), tls_dir)
    state = Path(tempfile.mkdtemp(dir=work, prefix="state-"))
    command = [
        sys.executable,
        str(SERVER_SCRIPT),
        f"--floats={floats}",
        f"--tls-dir={tls_dir}",
        f"--state-dir={state}",
        f"--max-concurrent-uploads={concurrency}",
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield RegionalChild(process)
    finally:
        process.kill()
        process.wait()


class Silo:
    """One silo: its own certificate, its own mTLS channel (connection), registered."""

    def __init__(self, pki: Path, work: Path, address: str, node: str) -> None:
        identity = Identity(JURISDICTION, Tier.SILO, node)
        files: TlsFiles = issue(pki, identity, work / "silos" / node)
        self.node = node
        self.signer = ContentSigner.from_tls_files(files)  # every update is signed, as a silo signs it
        self.channel = open_channel(address, files)
        stub = regional_pb2_grpc.RegionalAggregatorStub(self.channel)
        stub.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=EXAMPLES), timeout=30)
        # Pre-serialized messages go out as they are: no serializer on the client side.
        self._submit = self.channel.stream_unary(
            SUBMIT_METHOD, response_deserializer=regional_pb2.SubmitUpdateResponse.FromString
        )
        self._sink = self.channel.stream_unary(SINK_METHOD)

    def submit(self, update: EncodedUpdate) -> None:
        header = regional_pb2.UpdateHeader(
            round=ROUND,
            example_count=EXAMPLES,
            idempotency_key=f"{self.node}-update",
            content_signature=self.signer.sign(ROUND, update.digest),
        )
        messages = [regional_pb2.UpdateMessage(header=header).SerializeToString(), *update.messages]
        response = self._submit(iter(messages), timeout=CALL_TIMEOUT_S)
        if not response.accepted or response.duplicate:
            raise RuntimeError(f"{self.node}: update not accepted as new: {response}")

    def sink(self, messages: list[bytes]) -> None:
        counted = int.from_bytes(self._sink(iter(messages), timeout=CALL_TIMEOUT_S), "big")
        if counted != sum(len(m) for m in messages):
            raise RuntimeError(f"the sink counted {counted} bytes")


@dataclass(frozen=True)
class EncodedUpdate:
    messages: list[bytes]  # the chunk messages, serialized: what a silo puts on the wire after its header
    digest: bytes  # of the chunks, which each silo signs with its own key


def encoded_update(floats: int, values: FloatArray) -> EncodedUpdate:
    spec = bench_spec(floats)
    weights = {"dense/kernel": values.reshape(spec.tensors[0].shape)}
    chunks = list(encode_tensors(spec, weights))
    return EncodedUpdate(
        [regional_pb2.UpdateMessage(chunk=c).SerializeToString() for c in chunks], digest_chunks(chunks)
    )


@dataclass(frozen=True)
class Timing:
    wall_s: float
    server_cpu_s: float  # user + system time the regional's process spent during the call


def timed(child: RegionalChild, run: Callable[[], None]) -> Timing:
    cpu = child.cpu_seconds()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    return Timing(wall, child.cpu_seconds() - cpu)


def bench_throughput(pki: Path, work: Path, floats: int, repeats: int) -> None:
    payload = 4 * floats
    print(f"(a) ingest throughput: one update of {payload / 1e6:.0f} MB ({floats:,} float32), {repeats} runs")
    print("    encoding the update ...", flush=True)
    update = encoded_update(floats, np.random.default_rng(0).standard_normal(floats, dtype=np.float32))
    chunks = update.messages
    header = regional_pb2.UpdateMessage(
        header=regional_pb2.UpdateHeader(round=ROUND, example_count=EXAMPLES, idempotency_key="x-update")
    ).SerializeToString()
    sink_messages = [header, *chunks]  # the same count and sizes as a SubmitUpdate stream
    wire = sum(len(m) for m in sink_messages)
    print(
        f"    {len(sink_messages)} messages ({len(chunks)} chunks of <= {MAX_CHUNK_BYTES >> 20} MiB payload, "
        f"{wire / 1e6:.1f} MB serialized), encoded and serialized BEFORE timing:"
    )
    print("    times are transport + server-side ingest, not client encoding")
    print("    regional in a child process (real RegionalAggregator + regional_service + serve over mTLS);")
    print("    SubmitUpdate returns only after the update is folded into the round's accumulator")
    sinks: list[Timing] = []
    ingests: list[Timing] = []
    with regional_child(pki, work, floats, concurrency=4) as child:
        # One more silo than submissions keeps the round open (it closes once all have sent).
        silos = [Silo(pki, work, child.address, f"tput-{i}") for i in range(repeats + 2)]
        for run, silo in enumerate(silos[: repeats + 1]):
            silo.sink(sink_messages)  # untimed: warms this connection's flow-control window

            def sink(silo: Silo = silo) -> None:
                silo.sink(sink_messages)

            def ingest(silo: Silo = silo) -> None:
                silo.submit(update)

            if run % 2:
                ingest_t, sink_t = timed(child, ingest), timed(child, sink)
            else:
                sink_t, ingest_t = timed(child, sink), timed(child, ingest)
            label = "warm-up" if run == 0 else f"run {run}"
            print(
                f"    {label:<8} sink {payload / sink_t.wall_s / 1e6:6.0f} MB/s   "
                f"ingest {payload / ingest_t.wall_s / 1e6:6.0f} MB/s   "
                f"ingest/sink {sink_t.wall_s / ingest_t.wall_s:5.2f}",
                flush=True,
            )
            if run:
                sinks.append(sink_t)
                ingests.append(ingest_t)
        for silo in silos:
            silo.channel.close()

    def rates(timings: list[Timing]) -> tuple[float, float]:
        seconds = [t.wall_s for t in timings]
        return payload / min(seconds) / 1e6, payload / statistics.median(seconds) / 1e6

    sink_best, sink_median = rates(sinks)
    ingest_best, ingest_median = rates(ingests)
    paired = statistics.median(s.wall_s / i.wall_s for s, i in zip(sinks, ingests, strict=True))
    sink_cpu = statistics.median(t.server_cpu_s for t in sinks)
    ingest_cpu = statistics.median(t.server_cpu_s for t in ingests)
    for label, best, median, cpu in [
        ("raw gRPC byte sink (mTLS)", sink_best, sink_median, sink_cpu),
        ("SubmitUpdate into the accumulator (mTLS)", ingest_best, ingest_median, ingest_cpu),
    ]:
        print(
            f"  {label:<41} best {best:6.0f} MB/s   median {median:6.0f} MB/s   "
            f"regional CPU {cpu * 1e3:4.0f} ms/update"
        )
    print(
        f"  ingest / sink: best {ingest_best / sink_best:.2f}   median {ingest_median / sink_median:.2f}   "
        f"median of per-run ratios {paired:.2f}   (target >= {RATIO_TARGET})"
    )
    print(
        f"  regional CPU per update, sink / ingest: {sink_cpu / ingest_cpu:.2f} "
        "(CPU time is steadier than wall time on a busy machine)"
    )


@dataclass(frozen=True)
class Memory:
    baseline: int  # VmRSS once serving with the round open, before any update
    baseline_peak: int  # VmHWM at that moment (opening the round hashes the base model)
    uploads_peak: int  # highest VmRSS sampled while updates were streaming in
    peak: int  # VmHWM after the round closed (closing computes and saves the personalized model)


class RssSampler:
    """Samples the child's VmRSS every few milliseconds while in its `with` block."""

    def __init__(self, child: RegionalChild, every_s: float = 0.005) -> None:
        self._child, self._every_s = child, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.peak = max(self.peak, self._child.memory_bytes("VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def aggregate_updates(pki: Path, work: Path, floats: int, silos: int, concurrency: int) -> Memory:
    """The memory use of a fresh regional aggregating `silos` updates."""
    updates = [encoded_update(floats, np.full(floats, value, dtype=np.float32)) for value in (1.0, 3.0)]
    with regional_child(pki, work, floats, concurrency) as child:
        baseline, baseline_peak = child.memory_bytes("VmRSS"), child.memory_bytes("VmHWM")
        # Every silo registers first: the round closes as soon as all registered silos have sent.
        members = [Silo(pki, work, child.address, f"n{silos}-{i:03d}") for i in range(silos)]
        done = 0
        lock = threading.Lock()
        start = time.perf_counter()

        def send(index: int) -> None:
            nonlocal done
            silo = members[index]
            silo.submit(updates[index % 2])  # values 1.0 and 3.0, equal weights: mean 2.0
            silo.channel.close()
            with lock:
                done += 1
                if done % 10 == 0 or done == silos:
                    print(
                        f"      {done:3d}/{silos} updates folded ({time.perf_counter() - start:5.1f} s)",
                        flush=True,
                    )

        with RssSampler(child) as sampler, futures.ThreadPoolExecutor(concurrency) as pool:
            for result in [pool.submit(send, i) for i in range(silos)]:
                result.result()
        closed = child.expect("closed", ROUND_CLOSE_S)
        peak = child.memory_bytes("VmHWM")
    print(f"      regional: {closed}")
    return Memory(baseline, baseline_peak, sampler.peak, peak)


def bench_memory(pki: Path, work: Path, floats: int, counts: tuple[int, int], concurrency: int) -> None:
    update_mb = 4 * floats / 1e6
    print(
        f"(b) peak RSS of a regional aggregating updates of {update_mb:.0f} MB ({floats:,} float32), "
        f"{concurrency} uploads at a time (= its max_concurrent_uploads)"
    )
    peaks: list[int] = []
    baselines: list[int] = []
    for count in counts:
        print(f"    {count} silos: starting a fresh regional ...", flush=True)
        memory = aggregate_updates(pki, work, floats, count, concurrency)
        peaks.append(memory.peak)
        baselines.append(memory.baseline)

        def mb(size: int, memory: Memory = memory) -> str:
            above = (size - memory.baseline) / 1e6
            return f"{size / 1e6:4.0f} MB (baseline + {above:4.0f} MB = {above / update_mb:4.1f} updates)"

        print(
            f"    RSS({count}): baseline (serving, round open, no update yet) "
            f"{memory.baseline / 1e6:4.0f} MB\n"
            f"      peak RSS after close (VmHWM)         {mb(memory.peak)}\n"
            f"      highest RSS sampled during uploads   {mb(memory.uploads_peak)}\n"
            f"      VmHWM before any update              {mb(memory.baseline_peak)}",
            flush=True,
        )
    few, many = counts
    print(
        f"  peak RSS({few}) {peaks[0] / 1e6:.0f} MB   peak RSS({many}) {peaks[1] / 1e6:.0f} MB   "
        f"RSS({many}) / RSS({few}) = {peaks[1] / peaks[0]:.3f}   (target <= {RSS_TARGET})"
    )
    print(
        f"  baseline RSS before any update: {baselines[0] / 1e6:.0f} MB and {baselines[1] / 1e6:.0f} MB "
        "(each a fresh regional process; peaks are its VmHWM after the round closed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ingest-floats", type=int, default=25_000_000, help="(a) update size (default 25M)")
    parser.add_argument("--repeats", type=int, default=9, help="(a) timed runs of each (default 9)")
    parser.add_argument("--rss-floats", type=int, default=10_000_000, help="(b) update size (default 10M)")
    parser.add_argument(
        "--silos", type=int, nargs=2, default=(10, 100), metavar=("FEW", "MANY"), help="(b) default 10 100"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="(b) uploads at once (default 4)")
    parser.add_argument("--skip", choices=("throughput", "memory"), help="leave one part out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jurisfed-bench-") as tmp:
        work = Path(tmp)
        pki = create_ca(work / "ca")
        started = time.perf_counter()
        if args.skip != "throughput":
            bench_throughput(pki, work, args.ingest_floats, args.repeats)
        if args.skip != "memory":
            bench_memory(pki, work, args.rss_floats, tuple(args.silos), args.concurrency)
        print(f"bench_ingest took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
