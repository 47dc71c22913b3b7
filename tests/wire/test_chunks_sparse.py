"""Compressed tensors on the wire: int8 in blocks, top-k pairs, and top-k pairs in int8 blocks.

What a sender lays out, what a receiver reconstructs, and every way a hostile peer could try
to make a receiver write out of bounds, twice, or allocate beyond the model: each refused with
InvalidInput naming the problem.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.topk import kept_count
from jurisfed.errors import InvalidInput
from jurisfed.tensors import ModelSpec, TensorSpec, Weights
from jurisfed.wire import encodings
from jurisfed.wire.chunks import MAX_CHUNK_BYTES, TensorAssembler, encode_compressed, encode_tensors
from jurisfed.wire.v1 import global_pb2, tensors_pb2

RAW = tensors_pb2.ENCODING_RAW
INT8_BLOCKS = tensors_pb2.ENCODING_INT8_BLOCKS
SPARSE_RAW = tensors_pb2.ENCODING_SPARSE_RAW
SPARSE_INT8 = tensors_pb2.ENCODING_SPARSE_INT8_BLOCKS

BLOCKS_8 = Codec(CodecKind.INT8_BLOCKS, block_size=8)
TOP_10 = Codec(CodecKind.TOP_K, density=0.1)
TOP_10_INT8 = Codec(CodecKind.TOP_K_INT8, density=0.1, block_size=4)
COMPRESSED = [BLOCKS_8, TOP_10, TOP_10_INT8]

# 200 values of kernel: 20 kept at density 0.1, in 5 blocks of 4; 25 blocks of 8 dense.
SMALL = ModelSpec("small", (TensorSpec("kernel", (20, 10)), TensorSpec("bias", (10,))))
ODD_SIZES = ModelSpec(
    "odd-sizes",
    (
        TensorSpec("empty", (0,)),
        TensorSpec("one", (1,)),
        TensorSpec("small", (3, 5)),
        TensorSpec("large", (1000, 1100)),
    ),
)
# A dense MLP of 50,890 parameters, about the demo's size.
MLP_50K = ModelSpec(
    "mlp-50k",
    (
        TensorSpec("dense/kernel", (784, 64)),
        TensorSpec("dense/bias", (64,)),
        TensorSpec("out/kernel", (64, 10)),
        TensorSpec("out/bias", (10,)),
    ),
)


def random_weights(spec: ModelSpec, seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors}


def encode(spec: ModelSpec, codec: Codec, seed: int = 0) -> dict[str, EncodedTensor]:
    weights, rng = random_weights(spec, seed), np.random.default_rng(seed)
    return {t.name: codec.encode(weights[t.name], rng) for t in spec.tensors}


def chunks_of(
    spec: ModelSpec, codec: Codec, *, max_chunk_bytes: int = MAX_CHUNK_BYTES, seed: int = 0
) -> list[tensors_pb2.TensorChunk]:
    return list(encode_compressed(spec, encode(spec, codec, seed), max_chunk_bytes=max_chunk_bytes))


def assemble(spec: ModelSpec, codec: Codec, chunks: list[tensors_pb2.TensorChunk]) -> Weights:
    assembler = TensorAssembler(spec, codec=codec)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()


# --- Round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", COMPRESSED, ids=lambda c: c.kind.value)
def test_the_receiver_reconstructs_exactly_what_the_codec_encoded(codec: Codec) -> None:
    encoded = encode(ODD_SIZES, codec)

    received = assemble(ODD_SIZES, codec, list(encode_compressed(ODD_SIZES, encoded)))

    for tensor in ODD_SIZES.tensors:
        assert received[tensor.name].shape == tensor.shape
        np.testing.assert_array_equal(received[tensor.name].reshape(-1), encoded[tensor.name].decode())


def test_top_k_int8_round_trip_keeps_the_largest_values_within_one_step_of_their_block() -> None:
    codec = Codec(CodecKind.TOP_K_INT8, density=0.01, block_size=64)
    weights = random_weights(ODD_SIZES, seed=3)
    encoded = {t.name: codec.encode(weights[t.name], np.random.default_rng(3)) for t in ODD_SIZES.tensors}

    received = assemble(ODD_SIZES, codec, list(encode_compressed(ODD_SIZES, encoded)))

    values, decoded = weights["large"].reshape(-1), received["large"].reshape(-1)
    k = kept_count(values.size, 0.01)
    largest = np.argsort(-np.abs(values), kind="stable")[:k]
    assert set(np.flatnonzero(decoded)) <= set(largest)
    assert np.count_nonzero(decoded == 0) >= values.size - k
    # Each kept value is within one step of its block's scale: blocks of 64 kept values.
    steps = np.repeat(encoded["large"].scales, 64)[:k]
    kept = np.sort(largest)
    assert np.all(np.abs(decoded[kept] - values[kept]) < steps)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=3), min_size=1, max_size=4),
    max_chunk_bytes=st.integers(40, 200),
    codec=st.sampled_from(COMPRESSED),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_model_round_trips_compressed_through_any_chunk_size(
    shapes: list[list[int]], max_chunk_bytes: int, codec: Codec, seed: int
) -> None:
    spec = ModelSpec("any", tuple(TensorSpec(f"t{i}", tuple(shape)) for i, shape in enumerate(shapes)))
    encoded = encode(spec, codec, seed)

    chunks = list(encode_compressed(spec, encoded, max_chunk_bytes=max_chunk_bytes))
    received = assemble(spec, codec, chunks)

    assert all(len(c.data) + len(c.scales) + len(c.indices) <= max_chunk_bytes for c in chunks)
    for tensor in spec.tensors:
        np.testing.assert_array_equal(received[tensor.name].reshape(-1), encoded[tensor.name].decode())


def test_a_sparse_stream_after_a_dense_one_decodes_zeros_where_nothing_was_kept() -> None:
    assembler = TensorAssembler(SMALL, allowed_encodings=frozenset({RAW}), codec=TOP_10)
    for chunk in encode_tensors(SMALL, random_weights(SMALL, seed=1)):
        assembler.add(chunk)
    staged = assembler.staged()["kernel"].copy()
    assembler.reset()
    encoded = encode(SMALL, TOP_10, seed=2)

    for chunk in encode_compressed(SMALL, encoded):
        assembler.add(chunk)
    received = assembler.finish()

    assert np.count_nonzero(staged) == 200
    np.testing.assert_array_equal(received["kernel"].reshape(-1), encoded["kernel"].decode())
    assert np.count_nonzero(received["kernel"]) == 20


# --- Layout ------------------------------------------------------------------------------


def test_int8_block_chunks_start_on_a_block_and_carry_one_scale_per_block_they_touch() -> None:
    # 2 blocks of 8 values and their 2 scales: 2 * (8 + 4) = 24 bytes per chunk.
    chunks = [c for c in chunks_of(SMALL, BLOCKS_8, max_chunk_bytes=30) if c.name == "kernel"]

    assert [(c.offset, len(c.data), len(c.scales)) for c in chunks[:2]] == [(0, 16, 8), (16, 16, 8)]
    assert (chunks[-1].offset, len(chunks[-1].data), len(chunks[-1].scales)) == (192, 8, 4)
    assert all(c.block_size == 8 and c.encoding == INT8_BLOCKS for c in chunks)
    scales = np.frombuffer(b"".join(c.scales for c in chunks), dtype="<f4")
    values = random_weights(SMALL)["kernel"].reshape(25, 8)
    np.testing.assert_allclose(scales, np.abs(values).max(axis=1) / 127, rtol=1e-6)


def test_sparse_chunks_carry_increasing_indices_and_the_tensors_kept_count() -> None:
    chunks = [c for c in chunks_of(SMALL, TOP_10, max_chunk_bytes=64) if c.name == "kernel"]

    # 8 bytes a pair: 8 pairs per chunk; offsets count pairs.
    assert [(c.offset, c.kept) for c in chunks] == [(0, 20), (8, 20), (16, 20)]
    indices = np.frombuffer(b"".join(c.indices for c in chunks), dtype="<u4")
    values = np.frombuffer(b"".join(c.data for c in chunks), dtype="<f4")
    kernel = random_weights(SMALL)["kernel"].reshape(-1)
    assert np.all(np.diff(indices.astype(np.int64)) > 0)
    assert set(indices) == set(np.argsort(-np.abs(kernel))[:20])
    np.testing.assert_array_equal(values, kernel[indices])


def test_top_1_percent_int8_on_a_50k_model_is_over_50_times_smaller_than_float32_framing_included() -> None:
    def wire_bytes(chunks: list[tensors_pb2.TensorChunk]) -> int:
        # As the regional sends them: each chunk in an AggregateMessage, 5 bytes of gRPC framing.
        return sum(len(global_pb2.AggregateMessage(chunk=c).SerializeToString()) + 5 for c in chunks)

    raw = wire_bytes(list(encode_tensors(MLP_50K, random_weights(MLP_50K))))
    int8 = wire_bytes(
        list(
            encode_tensors(
                MLP_50K,
                random_weights(MLP_50K),
                encoding=tensors_pb2.ENCODING_INT8,
                rng=np.random.default_rng(),
            )
        )
    )
    blocks = wire_bytes(chunks_of(MLP_50K, Codec(CodecKind.INT8_BLOCKS)))
    top_k_int8 = wire_bytes(chunks_of(MLP_50K, Codec(CodecKind.TOP_K_INT8, density=0.01)))

    assert raw > MLP_50K.float32_bytes
    assert MLP_50K.float32_bytes / int8 >= 3.9
    assert MLP_50K.float32_bytes / blocks >= 3.9
    assert MLP_50K.float32_bytes / top_k_int8 >= 70


# --- The contract ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codec",
    [Codec(CodecKind.RAW), Codec(CodecKind.INT8), BLOCKS_8, TOP_10, TOP_10_INT8],
    ids=lambda c: c.kind.value,
)
def test_a_codec_survives_the_contract_on_the_wire(codec: Codec) -> None:
    message = tensors_pb2.Codec.FromString(encodings.codec_to_proto(codec).SerializeToString())

    assert encodings.codec_from_proto(message) == codec


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (tensors_pb2.Codec(), "codec encoding ENCODING_UNSPECIFIED is unknown"),
        (tensors_pb2.Codec(encoding=99), "codec encoding 99 is unknown"),
        (tensors_pb2.Codec(encoding=SPARSE_RAW, density=0.0), "density must be in (0, 1]"),
        (tensors_pb2.Codec(encoding=SPARSE_RAW, density=float("nan")), "density must be in (0, 1]"),
        (tensors_pb2.Codec(encoding=SPARSE_RAW, density=1.5), "density must be in (0, 1]"),
        (tensors_pb2.Codec(encoding=INT8_BLOCKS), "block_size must be from 1 to 65536, got 0"),
        (tensors_pb2.Codec(encoding=SPARSE_INT8, density=0.1, block_size=1 << 20), "got 1048576"),
    ],
)
def test_a_contract_codec_out_of_range_is_refused(message: tensors_pb2.Codec, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        encodings.codec_from_proto(message)

    assert problem in str(refused.value)


def test_compressed_encodings_are_allowed_only_through_the_contracts_codec() -> None:
    with pytest.raises(ValueError, match="ENCODING_SPARSE_RAW: allowed only through the contract's codec"):
        TensorAssembler(SMALL, allowed_encodings=frozenset({RAW, SPARSE_RAW}))
    with pytest.raises(ValueError, match="allow at least one encoding"):
        TensorAssembler(SMALL)


def test_a_receiver_refuses_an_encoding_other_than_its_contracts() -> None:
    with pytest.raises(InvalidInput, match="encoding ENCODING_SPARSE_RAW is not allowed here"):
        assemble(SMALL, BLOCKS_8, chunks_of(SMALL, TOP_10))


def test_the_sender_refuses_what_it_cannot_lay_out() -> None:
    encoded = encode(SMALL, TOP_10_INT8)
    with pytest.raises(ValueError, match="cannot hold one ENCODING_SPARSE_INT8_BLOCKS block of 4 values"):
        encode_compressed(SMALL, encoded, max_chunk_bytes=23)
    with pytest.raises(InvalidInput, match="do not match the model's"):
        encode_compressed(SMALL, {"kernel": encoded["kernel"]})
    with pytest.raises(ValueError, match="one stream, one codec"):
        encode_compressed(
            SMALL, {**encoded, "bias": TOP_10.encode(np.ones(10, np.float32), np.random.default_rng())}
        )
    with pytest.raises(InvalidInput, match="'bias' was encoded from 3 values, expected 10"):
        encode_compressed(
            SMALL, {**encoded, "bias": TOP_10_INT8.encode(np.ones(3, np.float32), np.random.default_rng())}
        )
    with pytest.raises(ValueError, match="encode them with their Codec and send them with encode_compressed"):
        encode_tensors(SMALL, random_weights(SMALL), encoding=SPARSE_RAW)


# --- Hostile payloads --------------------------------------------------------------------


def tampered(codec: Codec, index: int, **fields: Any) -> list[tensors_pb2.TensorChunk]:
    """SMALL's kernel stream up to chunk `index`, which is changed: sparse chunks hold 8 pairs
    (2 blocks of 4 in TOP_10_INT8), BLOCKS_8 chunks 16 values (2 blocks of 8)."""
    max_chunk_bytes = 30 if codec == BLOCKS_8 else 64
    chunks = [c for c in chunks_of(SMALL, codec, max_chunk_bytes=max_chunk_bytes) if c.name == "kernel"]
    chunks = chunks[: index + 1]
    for field, value in fields.items():
        setattr(chunks[index], field, value)
    return chunks


def u32(*values: int) -> bytes:
    return np.array(values, dtype="<u4").tobytes()


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


HOSTILE = [
    # Sizes that disagree with the contract or with each other.
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, kept=1 << 62),
        "kept 4611686018427387904 pairs, beyond the tensor's 200 values",
        id="kept-huge",
    ),
    pytest.param(
        TOP_10, tampered(TOP_10, 0, kept=-1), "kept -1 pairs, beyond the tensor's 200", id="kept-negative"
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, kept=201),
        "kept 201 pairs, beyond the tensor's 200 values",
        id="kept-past-size",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, kept=40),
        "kept 40 pairs; the contract's density 0.1 keeps 20 of 200",
        id="kept-not-contract",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, indices=u32(1, 2, 3)),
        "32 bytes of ENCODING_SPARSE_RAW values for 3 indices; expected 12",
        id="values-vs-indices",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, indices=b"\0" * 7),
        "7 bytes of indices is not a whole number",
        id="partial-index",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 2, indices=u32(*range(190, 198)), data=f32(*[1.0] * 8)),
        "runs past the tensor's 20 kept pairs",
        id="pairs-past-kept",
    ),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, block_size=16),
        "block_size 16, the contract's block size is 8",
        id="block-size",
    ),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, block_size=0),
        "block_size 0, the contract's block size is 8",
        id="block-size-zero",
    ),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, scales=f32(1.0)),
        "4 bytes of scales for 16 values in blocks of 8; expected 8",
        id="scales-count",
    ),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, data=b"\1" * 12, scales=f32(1.0, 1.0)),
        "holds 12 values, not whole blocks of 8",
        id="misaligned",
    ),
    pytest.param(
        TOP_10_INT8,
        tampered(TOP_10_INT8, 0, scales=b""),
        "0 bytes of scales for 8 values in blocks of 4; expected 8",
        id="sparse-scales-missing",
    ),
    pytest.param(
        TOP_10_INT8,
        tampered(TOP_10_INT8, 0, block_size=2),
        "block_size 2, the contract's block size is 4",
        id="sparse-block-size",
    ),
    # Indices out of range, repeated or going back.
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, indices=u32(0, 1, 2, 3, 4, 5, 6, 200)),
        "index 200 is out of range for a tensor of 200 values",
        id="index-past-end",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, indices=u32(0, 1, 2, 3, 4, 5, 6, 0xFFFFFFFF)),
        "index 4294967295 is out of range",
        id="index-max",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, indices=u32(0, 1, 2, 3, 3, 5, 6, 7)),
        "index 3 at pair 4 does not exceed the previous index 3",
        id="duplicate-in-chunk",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, indices=u32(0, 1, 2, 9, 4, 5, 6, 7)),
        "index 4 at pair 4 does not exceed the previous index 9",
        id="unsorted",
    ),
    pytest.param(
        TOP_10_INT8,
        tampered(TOP_10_INT8, 1, indices=u32(*[0] * 8)),
        "index 0 at pair 8 does not exceed the previous index",
        id="duplicate-across-chunks",
    ),
    # Non-finite values and scales.
    pytest.param(
        TOP_10, tampered(TOP_10, 1, data=f32(1, 2, 3, np.nan, 5, 6, 7, 8)), "NaN or infinite", id="sparse-nan"
    ),
    pytest.param(TOP_10, tampered(TOP_10, 0, data=f32(*[np.inf] * 8)), "NaN or infinite", id="sparse-inf"),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 1, scales=f32(np.nan, 1.0)),
        "block scales must be finite non-negative",
        id="scale-nan",
    ),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, scales=f32(1.0, -1.0)),
        "block scales must be finite non-negative",
        id="scale-negative",
    ),
    pytest.param(
        TOP_10_INT8,
        tampered(TOP_10_INT8, 0, scales=f32(np.inf, 1.0)),
        "block scales must be finite non-negative",
        id="sparse-scale-inf",
    ),
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, scales=f32(1e37, 1.0)),
        "would decode to values that overflow float32",
        id="scale-overflow",
    ),
    # Fields that do not belong to the encoding.
    pytest.param(
        BLOCKS_8,
        tampered(BLOCKS_8, 0, indices=u32(1)),
        "ENCODING_INT8_BLOCKS does not use field 'indices'",
        id="dense-indices",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, scale=0.5),
        "ENCODING_SPARSE_RAW does not use field 'scale'",
        id="sparse-scale",
    ),
    pytest.param(
        TOP_10,
        tampered(TOP_10, 0, scales=f32(1.0)),
        "ENCODING_SPARSE_RAW does not use field 'scales'",
        id="sparse-raw-scales",
    ),
]


@pytest.mark.parametrize(("codec", "chunks", "problem"), HOSTILE)
def test_a_hostile_chunk_is_refused_with_a_message_naming_the_problem(
    codec: Codec, chunks: list[tensors_pb2.TensorChunk], problem: str
) -> None:
    with pytest.raises(InvalidInput, match="tensor 'kernel'") as refused:
        assemble(SMALL, codec, chunks)

    assert problem in str(refused.value)


def test_raw_and_int8_chunks_that_carry_the_newer_fields_are_refused() -> None:
    chunks = list(encode_tensors(SMALL, random_weights(SMALL)))
    chunks[0].kept = 3
    assembler = TensorAssembler(SMALL, allowed_encodings=frozenset({RAW}))

    with pytest.raises(InvalidInput, match="ENCODING_RAW does not use field 'kept'"):
        assembler.add(chunks[0])


def test_a_huge_claimed_count_is_refused_without_allocating_for_it() -> None:
    assembler = TensorAssembler(ODD_SIZES, codec=TOP_10)
    chunk = next(c for c in chunks_of(ODD_SIZES, TOP_10) if c.name == "large")
    chunk.kept = 1 << 40

    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="beyond the tensor's 1100000 values"):
            assembler.add(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # The chunk's own bytes (read once, ~880 KB) and nothing sized by the claim.
    assert peak < 2 * len(chunk.data) + len(chunk.indices) + (1 << 16)


def test_an_incomplete_sparse_stream_names_the_missing_pairs() -> None:
    assembler = TensorAssembler(SMALL, codec=TOP_10)
    assembler.add(tampered(TOP_10, 0)[0])

    with pytest.raises(InvalidInput, match=r"'kernel' \(8 of 20 kept pairs\), 'bias' \(no chunks\)"):
        assembler.finish()


def test_a_sparse_tensor_sent_twice_is_refused() -> None:
    chunks = [c for c in chunks_of(SMALL, TOP_10) if c.name == "bias"]

    with pytest.raises(InvalidInput, match="tensor 'bias' is already complete"):
        assemble(SMALL, TOP_10, chunks * 2)
