"""Compression codecs: throughput, bytes on the wire, refusal of hostile payloads, and quality.

Prints, for each codec (raw, int8, int8-blocks, top-k 1 %, top-k 1 % + int8):
  1. GB/s on --floats float32 values (one tensor; GB of float32 input per second, best of
     --repeats): the codec's encode, an error-feedback step (compress delta + residual, keep the
     rest), the step a silo or regional takes per round (ResidualFile: for top-k codecs the
     error-feedback step and the residual written atomically to its state directory), the
     sender's encode to chunks (codec + chunk messages), the receiver's decode (TensorAssembler:
     validate and write every chunk), and wire bytes vs float32.
  2. Bytes on the wire for a 50,890-parameter MLP, framing included (each chunk in an
     AggregateMessage, plus gRPC's 5-byte message prefix), and how many times fewer than float32.
  3. Hostile payloads (wrong sizes, out-of-range or repeated indices, bad scales, a huge
     claimed count): each must be refused with InvalidInput, quickly, and the refusals are
     counted; anything else is a crash and this benchmark exits non-zero.
  4. A numeric experiment: 8 senders, --rounds rounds, updates = a steady direction + noise.
     Relative error of the running sum of per-round means against the uncompressed one, after
     1, 10 and --rounds rounds: unbiased int8 is exact on average; top-k alone never sends most
     of the sum; with error feedback the error keeps falling.
No assertions on timings: the numbers are for people, to compare with REFERENCE.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import best_seconds  # bench/ is on sys.path

from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.error_feedback import ErrorFeedback
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec, Weights
from jurisfed.wire.chunks import TensorAssembler, encode_compressed
from jurisfed.wire.v1 import global_pb2, tensors_pb2

CODECS = {
    "raw": Codec(CodecKind.RAW),
    "int8": Codec(CodecKind.INT8),
    "int8-blocks/256": Codec(CodecKind.INT8_BLOCKS),
    "top-k 1%": Codec(CodecKind.TOP_K, density=0.01),
    "top-k 1% + int8": Codec(CodecKind.TOP_K_INT8, density=0.01),
}
MLP_50K = ModelSpec(
    "mlp-50k",
    (
        TensorSpec("dense/kernel", (784, 64)),
        TensorSpec("dense/bias", (64,)),
        TensorSpec("out/kernel", (64, 10)),
        TensorSpec("out/bias", (10,)),
    ),
)


def wire_bytes(chunks: list[tensors_pb2.TensorChunk]) -> int:
    """Bytes on the wire: each chunk in an AggregateMessage, plus gRPC's 5-byte message prefix."""
    return sum(global_pb2.AggregateMessage(chunk=chunk).ByteSize() + 5 for chunk in chunks)


def bench_throughput(floats: int, repeats: int) -> None:
    spec = ModelSpec("bench", (TensorSpec("values", (floats,)),))
    values = np.random.default_rng(1).standard_normal(floats).astype(np.float32)
    rng = np.random.default_rng(2)
    nbytes = values.nbytes
    print(f"throughput on {floats / 1e6:.0f}M floats ({nbytes / 1e6:.0f} MB),", end=" ")
    print(f"GB/s of float32 (best of {repeats}):")
    print(
        f"  {'codec':<18} {'encode':>8} {'EF step':>8} {'sender':>8} {'to chunks':>10} {'decode':>8} "
        f"{'wire bytes':>12}"
    )
    scratch = tempfile.TemporaryDirectory(prefix="bench-codecs-")
    for label, codec in CODECS.items():
        feedback = ErrorFeedback(spec)
        residual = ResidualFile(Path(scratch.name) / f"{codec.kind.value}.residual")
        encoded = {"values": codec.encode(values, rng)}
        chunks = list(encode_compressed(spec, encoded))
        assembler = TensorAssembler(spec, codec=codec)

        def to_chunks(codec: Codec = codec) -> object:
            return list(encode_compressed(spec, {"values": codec.encode(values, rng)}))

        def decode(
            assembler: TensorAssembler = assembler, chunks: list[tensors_pb2.TensorChunk] = chunks
        ) -> object:
            assembler.reset()
            for chunk in chunks:
                assembler.add(chunk)
            return assembler.staged()

        speeds = [
            nbytes / best_seconds(run, repeats) / 1e9
            for run in (
                lambda codec=codec: codec.encode(values, rng),
                lambda codec=codec, feedback=feedback: feedback.compress({"values": values}, codec, rng),
                lambda codec=codec, residual=residual: residual.encode(spec, {"values": values}, codec, rng),
                to_chunks,
                decode,
            )
        ]
        size = wire_bytes(chunks)
        # Raw "encodes" to a view of its input (and its sender keeps no residual): no time worth a number.
        view = codec.kind is CodecKind.RAW
        encode, sender = ("  (view)", "  (view)") if view else (f"{speeds[0]:8.2f}", f"{speeds[2]:8.2f}")
        print(
            f"  {label:<18} {encode} {speeds[1]:8.2f} {sender} {speeds[3]:10.2f} {speeds[4]:8.2f} "
            f"{size / 1e6:9.2f} MB  ({nbytes / size:5.1f}x fewer)"
        )
    scratch.cleanup()


def bench_bytes() -> None:
    weights = _random(MLP_50K, 3)
    rng = np.random.default_rng(4)
    float32_bytes = MLP_50K.float32_bytes
    print(
        f"bytes on the wire, {MLP_50K.total_elements:,}-parameter MLP ({float32_bytes:,} bytes of float32), "
        "framing included:"
    )
    for label, codec in CODECS.items():
        encoded = {t.name: codec.encode(weights[t.name], rng) for t in MLP_50K.tensors}
        chunks = list(encode_compressed(MLP_50K, encoded))
        size = wire_bytes(chunks)
        payload = sum(tensor.payload_bytes for tensor in encoded.values())
        print(
            f"  {label:<18} {size:>9,} bytes ({payload:>7,} payload, {size - payload:>4} framing)  "
            f"{float32_bytes / size:6.1f}x fewer than float32"
        )


def bench_hostile() -> bool:
    """Hostile payloads against a 10M-value top-k receiver; True when every one was refused."""
    size = 10_000_000
    spec = ModelSpec("hostile", (TensorSpec("values", (size,)),))
    top_k = Codec(CodecKind.TOP_K_INT8, density=0.01)
    values = np.random.default_rng(5).standard_normal(size).astype(np.float32)
    # Chunks of 256 KiB: several per tensor, so that order across chunks is tested too.
    sparse = {"values": top_k.encode(values, np.random.default_rng(6))}
    good = list(encode_compressed(spec, sparse, max_chunk_bytes=1 << 18))
    blocks = Codec(CodecKind.INT8_BLOCKS, block_size=256)
    dense = list(encode_compressed(spec, {"values": blocks.encode(values, np.random.default_rng(7))}))

    def changed(
        chunks: list[tensors_pb2.TensorChunk], index: int, **fields: object
    ) -> list[tensors_pb2.TensorChunk]:
        out = [tensors_pb2.TensorChunk.FromString(c.SerializeToString()) for c in chunks[: index + 1]]
        for field, value in fields.items():
            setattr(out[index], field, value)
        return out

    def u32(*indices: int) -> bytes:
        return np.array(indices, dtype="<u4").tobytes()

    first = good[0]
    pairs = len(first.indices) // 4
    cases: list[tuple[str, Codec, list[tensors_pb2.TensorChunk]]] = [
        ("kept claims 2**62 pairs", top_k, changed(good, 0, kept=1 << 62)),
        ("kept disagrees with the contract's density", top_k, changed(good, 0, kept=200_000)),
        ("index past the tensor's end", top_k, changed(good, 0, indices=u32(*range(pairs - 1), size))),
        ("index 2**32 - 1", top_k, changed(good, 0, indices=u32(*range(pairs - 1), 0xFFFFFFFF))),
        ("repeated index within a chunk", top_k, changed(good, 0, indices=u32(*[5] * pairs))),
        (
            "index going back across chunks",
            top_k,
            changed(good, 1, indices=first.indices[: len(good[1].indices)]),
        ),
        ("more values than indices", top_k, changed(good, 0, data=first.data + b"\0")),
        ("scales missing", top_k, changed(good, 0, scales=b"")),
        (
            "NaN scale",
            top_k,
            changed(good, 0, scales=np.full(len(first.scales) // 4, np.nan, "<f4").tobytes()),
        ),
        ("block size 0", top_k, changed(good, 0, block_size=0)),
        ("block size not the contract's", top_k, changed(good, 0, block_size=65536)),
        (
            "pairs past the kept count",
            top_k,
            changed(good, len(good) - 1, indices=first.indices, data=first.data, scales=first.scales),
        ),
        ("int8-blocks chunk not whole blocks", blocks, changed(dense, 0, data=dense[0].data[:-1])),
        (
            "int8-blocks scale overflowing",
            blocks,
            changed(dense, 0, scales=np.full(len(dense[0].scales) // 4, 1e38, "<f4").tobytes()),
        ),
        ("a sparse chunk to a dense contract", blocks, good[:1]),
    ]
    print(f"hostile payloads against a {size / 1e6:.0f}M-value receiver:")
    refused_count = 0
    for label, codec, chunks in cases:
        assembler = TensorAssembler(spec, codec=codec)
        start = time.perf_counter()
        try:
            for chunk in chunks:
                assembler.add(chunk)
            assembler.finish()
        except InvalidInput as refused:
            took_ms = (time.perf_counter() - start) * 1e3
            print(f"  {label:<44} refused in {took_ms:5.1f} ms: {str(refused)[:140]}")
            refused_count += 1
        else:
            print(f"  {label:<44} NOT REFUSED")
    print(f"  refused {refused_count} of {len(cases)} hostile payloads, with InvalidInput; none crashed")
    return refused_count == len(cases)


def bench_quality(rounds: int) -> None:
    senders = 8
    rng = np.random.default_rng(8)
    direction = _random(MLP_50K, 9)
    variants: dict[str, tuple[Codec, bool]] = {
        "int8": (CODECS["int8"], False),
        "int8-blocks/256": (CODECS["int8-blocks/256"], False),
        "top-k 1% (no EF)": (CODECS["top-k 1%"], False),
        "top-k 1% + EF": (CODECS["top-k 1%"], True),
        "top-k 1% + int8 + EF": (CODECS["top-k 1% + int8"], True),
    }
    feedback = {(name, i): ErrorFeedback(MLP_50K) for name in variants for i in range(senders)}
    exact = np.zeros(MLP_50K.total_elements)
    sums = {name: np.zeros(MLP_50K.total_elements) for name in variants}
    checkpoints = sorted({1, 10, rounds})
    errors: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(1, rounds + 1):
        deltas = [_noisy(direction, rng) for _ in range(senders)]
        exact += np.mean([_flat(d) for d in deltas], axis=0)
        for name, (codec, with_feedback) in variants.items():
            sent = [
                feedback[name, i].compress(delta, codec, rng)
                if with_feedback
                else {n: codec.encode(v, rng) for n, v in delta.items()}
                for i, delta in enumerate(deltas)
            ]
            sums[name] += np.mean([_flat_decoded(s) for s in sent], axis=0)
            if round_number in checkpoints:
                errors[name].append(float(np.linalg.norm(exact - sums[name]) / np.linalg.norm(exact)))
    header = "".join(f"{f'after {r}':>11}" for r in checkpoints)
    print(
        f"mean of {senders} senders' updates ({MLP_50K.total_elements:,} values, direction + noise), "
        "relative error of the running sum vs uncompressed:"
    )
    print(f"  {'codec':<22}{header}")
    for name, row in errors.items():
        print(f"  {name:<22}" + "".join(f"{e:11.4f}" for e in row))


def _random(spec: ModelSpec, seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors}


def _noisy(direction: Weights, rng: np.random.Generator) -> Weights:
    return {n: (v + rng.standard_normal(v.shape)).astype(np.float32) for n, v in direction.items()}


def _flat(weights: Weights) -> FloatArray:
    return np.concatenate([weights[t.name].reshape(-1) for t in MLP_50K.tensors])


def _flat_decoded(sent: dict[str, EncodedTensor]) -> FloatArray:
    return np.concatenate([sent[t.name].decode() for t in MLP_50K.tensors])


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--floats", type=int, default=10_000_000, help="values per codec (default 10M)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the best counts")
    parser.add_argument("--rounds", type=int, default=100, help="rounds of the numeric experiment")
    args = parser.parse_args()
    bench_throughput(args.floats, args.repeats)
    print()
    bench_bytes()
    print()
    all_refused = bench_hostile()
    print()
    bench_quality(args.rounds)
    return 0 if all_refused else 1


if __name__ == "__main__":
    sys.exit(main())
