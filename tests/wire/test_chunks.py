"""Tensors as chunk streams: what a sender encodes, a receiver assembles, or refuses to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jurisfed.errors import InvalidInput
from jurisfed.tensors import ModelSpec, TensorSpec, Weights
from jurisfed.wire.chunks import MAX_CHUNK_BYTES, TensorAssembler, encode_tensors, split_stream
from jurisfed.wire.v1 import global_pb2, regional_pb2, tensors_pb2

RAW = tensors_pb2.ENCODING_RAW
INT8 = tensors_pb2.ENCODING_INT8
BOTH = frozenset({RAW, INT8})

ODD_SIZES = ModelSpec(
    "odd-sizes",
    (
        TensorSpec("empty", (0,)),
        TensorSpec("one", (1,)),
        TensorSpec("small", (3, 5)),
        TensorSpec("straddles_1mib", (262145,)),  # one float past a 1 MiB RAW chunk
        TensorSpec("matrix", (1000, 700)),
    ),
)
# Small enough that every tensor spans several chunks of 4 values (16 RAW bytes, 4 INT8 bytes).
TINY = ModelSpec("tiny", (TensorSpec("w", (3, 5)), TensorSpec("b", (5,))))
TINY_CHUNK_BYTES = 16
TINY_INT8_CHUNK_BYTES = 4


def random_weights(spec: ModelSpec, seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors}


def assemble(
    spec: ModelSpec, chunks: Iterator[tensors_pb2.TensorChunk], allowed: frozenset[int] = BOTH
) -> Weights:
    assembler = TensorAssembler(spec, allowed_encodings=allowed)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()


def tiny_chunks(encoding: tensors_pb2.Encoding.ValueType = RAW) -> list[tensors_pb2.TensorChunk]:
    weights = random_weights(TINY)
    rng = np.random.default_rng(1)
    max_chunk_bytes = TINY_CHUNK_BYTES if encoding == RAW else TINY_INT8_CHUNK_BYTES
    return list(encode_tensors(TINY, weights, encoding=encoding, rng=rng, max_chunk_bytes=max_chunk_bytes))


# --- Round trips -------------------------------------------------------------------------


def test_raw_round_trip_is_exact_for_odd_sizes() -> None:
    weights = random_weights(ODD_SIZES)

    received = assemble(ODD_SIZES, encode_tensors(ODD_SIZES, weights))

    assert list(received) == [t.name for t in ODD_SIZES.tensors]
    for name, values in weights.items():
        assert received[name].dtype == np.float32
        np.testing.assert_array_equal(received[name], values)


def test_staged_weights_are_the_assemblers_own_buffers_until_the_next_stream() -> None:
    first, second = random_weights(ODD_SIZES, seed=1), random_weights(ODD_SIZES, seed=2)
    assembler = TensorAssembler(ODD_SIZES, allowed_encodings=BOTH)
    for chunk in encode_tensors(ODD_SIZES, first):
        assembler.add(chunk)
    staged = assembler.staged()
    for name, values in first.items():
        np.testing.assert_array_equal(staged[name], values)

    assembler.reset()
    for chunk in encode_tensors(ODD_SIZES, second):
        assembler.add(chunk)
    restaged = assembler.staged()
    name = ODD_SIZES.tensors[-1].name
    assert np.shares_memory(staged[name], restaged[name])  # no fresh allocation per stream
    np.testing.assert_array_equal(restaged[name], second[name])


def test_staging_an_incomplete_stream_names_what_is_missing() -> None:
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)
    assembler.add(tiny_chunks()[0])
    with pytest.raises(InvalidInput, match="stream ended before these tensors were complete"):
        assembler.staged()


def test_int8_round_trip_is_within_one_quantization_step() -> None:
    weights = random_weights(ODD_SIZES)

    chunks = encode_tensors(ODD_SIZES, weights, encoding=INT8, rng=np.random.default_rng(7))
    received = assemble(ODD_SIZES, chunks)

    for name, values in weights.items():
        assert received[name].shape == values.shape
        step = np.max(np.abs(values)) / 127 if values.size else 0.0
        assert np.all(np.abs(received[name] - values) <= step * (1 + 1e-6)), name


@pytest.mark.parametrize("encoding", [RAW, INT8])
def test_every_chunk_payload_fits_in_max_chunk_bytes(encoding: tensors_pb2.Encoding.ValueType) -> None:
    chunks = list(
        encode_tensors(ODD_SIZES, random_weights(ODD_SIZES), encoding=encoding, rng=np.random.default_rng())
    )

    assert max(len(c.data) for c in chunks) <= MAX_CHUNK_BYTES
    assert all(c.encoding == encoding for c in chunks)


def test_tensor_one_value_past_a_chunk_is_split_in_two_contiguous_chunks() -> None:
    chunks = [c for c in encode_tensors(ODD_SIZES, random_weights(ODD_SIZES)) if c.name == "straddles_1mib"]

    assert [(c.offset, len(c.data)) for c in chunks] == [(0, MAX_CHUNK_BYTES), (262144, 4)]
    assert all(list(c.shape) == [262145] for c in chunks)


def test_an_empty_tensor_is_sent_as_exactly_one_empty_chunk() -> None:
    chunks = [c for c in encode_tensors(ODD_SIZES, random_weights(ODD_SIZES)) if c.name == "empty"]

    assert len(chunks) == 1
    assert (chunks[0].offset, chunks[0].data, list(chunks[0].shape)) == (0, b"", [0])


def test_chunks_come_in_spec_order_as_little_endian_row_major_slices() -> None:
    weights = random_weights(TINY)

    chunks = list(encode_tensors(TINY, weights, max_chunk_bytes=TINY_CHUNK_BYTES))

    assert [c.name for c in chunks] == ["w"] * 4 + ["b"] * 2
    kernel = b"".join(c.data for c in chunks if c.name == "w")
    assert kernel == weights["w"].astype("<f4").tobytes(order="C")


def test_int8_repeats_the_tensor_scale_on_each_of_its_chunks() -> None:
    chunks = tiny_chunks(INT8)

    kernel_scales = [c.scale for c in chunks if c.name == "w"]
    assert len(kernel_scales) == 4
    assert len(set(kernel_scales)) == 1
    assert kernel_scales[0] > 0


def test_tensors_may_arrive_in_any_order() -> None:
    chunks = tiny_chunks()
    bias_first = [c for c in chunks if c.name == "b"] + [c for c in chunks if c.name == "w"]

    received = assemble(TINY, iter(bias_first))

    np.testing.assert_array_equal(received["w"], random_weights(TINY)["w"])
    np.testing.assert_array_equal(received["b"], random_weights(TINY)["b"])


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=3), min_size=1, max_size=4),
    max_chunk_bytes=st.integers(4, 64),
    encoding=st.sampled_from([RAW, INT8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_model_round_trips_through_any_chunk_size(
    shapes: list[list[int]], max_chunk_bytes: int, encoding: tensors_pb2.Encoding.ValueType, seed: int
) -> None:
    spec = ModelSpec("any", tuple(TensorSpec(f"t{i}", tuple(shape)) for i, shape in enumerate(shapes)))
    weights = random_weights(spec, seed)
    rng = np.random.default_rng(seed)

    chunks = list(encode_tensors(spec, weights, encoding=encoding, rng=rng, max_chunk_bytes=max_chunk_bytes))
    received = assemble(spec, iter(chunks))

    assert all(len(c.data) <= max_chunk_bytes for c in chunks)
    for name, values in weights.items():
        if encoding == RAW:
            np.testing.assert_array_equal(received[name], values)
        else:
            step = np.max(np.abs(values)) / 127 if values.size else 0.0
            assert np.all(np.abs(received[name] - values) <= step * (1 + 1e-6))


def test_payload_bytes_counts_the_data_received() -> None:
    chunks = tiny_chunks()
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)

    for chunk in chunks:
        assembler.add(chunk)

    assert assembler.payload_bytes == 4 * (15 + 5)


# --- The sender refuses what it cannot send ----------------------------------------------


def test_int8_needs_a_random_generator() -> None:
    with pytest.raises(ValueError, match="rng"):
        encode_tensors(TINY, random_weights(TINY), encoding=INT8)


def test_weights_that_do_not_match_the_spec_are_refused_before_any_chunk() -> None:
    weights = random_weights(TINY)
    weights["w"] = weights["w"].T.copy()

    with pytest.raises(InvalidInput, match="'w'"):
        encode_tensors(TINY, weights)


# --- The receiver refuses malformed streams ----------------------------------------------


def tampered(index: int, **fields: Any) -> list[tensors_pb2.TensorChunk]:
    """The TINY stream with chunk `index` changed; chunks after it are dropped."""
    chunks = tiny_chunks()[: index + 1]
    bad = chunks[index]
    for field, value in fields.items():
        if field == "shape":
            del bad.shape[:]
            bad.shape.extend(value)
        else:
            setattr(bad, field, value)
    return chunks


def nan_payload() -> bytes:
    return np.array([1.0, np.nan, 2.0, 3.0], dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        pytest.param(tampered(0, name="ghost"), "tensor 'ghost' is not part of model 'tiny'", id="unknown"),
        pytest.param(
            tampered(0, dtype=tensors_pb2.DTYPE_UNSPECIFIED),
            "dtype DTYPE_UNSPECIFIED, expected DTYPE_FLOAT32",
            id="dtype",
        ),
        pytest.param(tampered(1, shape=[5, 3]), "shape [5, 3], expected [3, 5]", id="shape"),
        pytest.param(tampered(0, shape=[15]), "shape [15], expected [3, 5]", id="flattened-shape"),
        pytest.param(
            tampered(0, encoding=tensors_pb2.ENCODING_UNSPECIFIED),
            "encoding ENCODING_UNSPECIFIED is not allowed",
            id="encoding-unspecified",
        ),
        pytest.param(
            tampered(0, data=b"\0" * 15), "15 bytes of ENCODING_RAW data is not a whole", id="bytes"
        ),
        pytest.param(tampered(1, data=b""), "empty chunk at offset 4", id="empty-chunk"),
        pytest.param(tampered(1, offset=0), "chunk at offset 0, expected offset 4", id="duplicate"),
        pytest.param(tampered(1, offset=8), "chunk at offset 8, expected offset 4", id="gap"),
        pytest.param(tampered(0, offset=-4), "chunk at offset -4, expected offset 0", id="negative"),
        pytest.param(tampered(3, data=b"\0" * 16), "runs past the tensor's 15 values", id="overrun"),
        pytest.param(tampered(2, data=nan_payload()), "NaN or infinite", id="nan"),
        pytest.param(tampered(0, data=np.array([np.inf] * 4, "<f4").tobytes()), "NaN or infinite", id="inf"),
        pytest.param(
            tampered(0, data=np.array([3e38, -3e38, 0, 0], "<f4").tobytes()),
            "overflowing float32",
            id="overflowing",
        ),
    ],
)
def test_a_malformed_chunk_is_refused_with_a_message_naming_the_problem(
    chunks: list[tensors_pb2.TensorChunk], message: str
) -> None:
    with pytest.raises(InvalidInput, match=r"tensor '.*'") as refused:
        assemble(TINY, iter(chunks))

    assert message in str(refused.value)


def test_chunks_of_one_tensor_out_of_order_are_refused() -> None:
    chunks = tiny_chunks()

    with pytest.raises(InvalidInput, match="tensor 'w': chunk at offset 4, expected offset 0"):
        assemble(TINY, iter([chunks[1], chunks[0]]))


def test_a_chunk_for_a_complete_tensor_is_refused() -> None:
    chunks = tiny_chunks()

    with pytest.raises(InvalidInput, match="tensor 'b' is already complete"):
        assemble(TINY, iter([*chunks, chunks[-1]]))


def test_an_empty_tensor_sent_twice_is_refused() -> None:
    spec = ModelSpec("with-empty", (TensorSpec("nothing", (0, 3)),))
    chunks = list(encode_tensors(spec, spec.zeros()))

    with pytest.raises(InvalidInput, match="tensor 'nothing' is already complete"):
        assemble(spec, iter(chunks * 2))


def test_an_encoding_the_receiver_does_not_allow_is_refused() -> None:
    with pytest.raises(InvalidInput, match="encoding ENCODING_INT8 is not allowed here"):
        assemble(TINY, iter(tiny_chunks(INT8)), allowed=frozenset({RAW}))


def test_a_tensor_that_switches_encoding_is_refused() -> None:
    raw, int8 = tiny_chunks(RAW), tiny_chunks(INT8)

    with pytest.raises(InvalidInput, match="encoding changed from ENCODING_RAW to ENCODING_INT8"):
        assemble(TINY, iter([raw[0], int8[1]]))


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (float("nan"), "INT8 scale nan is not a finite non-negative number"),
        (float("inf"), "INT8 scale inf is not a finite non-negative number"),
        (-0.5, "INT8 scale -0.5 is not a finite non-negative number"),
        (1e37, "overflow float32"),
    ],
)
def test_an_int8_scale_that_cannot_decode_to_finite_values_is_refused(scale: float, message: str) -> None:
    chunks = tiny_chunks(INT8)
    chunks[0].scale = scale

    with pytest.raises(InvalidInput, match="tensor 'w'") as refused:
        assemble(TINY, iter(chunks))

    assert message in str(refused.value)


def test_an_int8_scale_that_changes_within_a_tensor_is_refused() -> None:
    chunks = tiny_chunks(INT8)
    chunks[1].scale = chunks[0].scale * 2

    with pytest.raises(InvalidInput, match=r"differs from the scale .* of the tensor's earlier chunks"):
        assemble(TINY, iter(chunks))


def test_an_int8_chunk_is_a_whole_number_of_bytes_so_any_length_decodes() -> None:
    spec = ModelSpec("odd", (TensorSpec("x", (3,)),))
    weights = {"x": np.array([1.0, -2.0, 0.5], dtype=np.float32)}

    chunks = encode_tensors(spec, weights, encoding=INT8, rng=np.random.default_rng(), max_chunk_bytes=2)
    received = assemble(spec, chunks)

    assert np.all(np.abs(received["x"] - weights["x"]) <= 2.0 / 127 * (1 + 1e-6))


def test_finishing_an_incomplete_stream_names_what_is_missing() -> None:
    chunks = tiny_chunks()
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)
    for chunk in chunks[:2]:
        assembler.add(chunk)

    with pytest.raises(InvalidInput, match=r"'w' \(8 of 15 values\), 'b' \(no chunks\)"):
        assembler.finish()


# --- Reuse -------------------------------------------------------------------------------


def test_an_assembler_reset_after_a_failed_stream_assembles_the_next_one() -> None:
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)
    *good, bad = tampered(2, data=nan_payload())
    for chunk in good:
        assembler.add(chunk)
    with pytest.raises(InvalidInput, match="NaN"):
        assembler.add(bad)
    assembler.reset()
    second = random_weights(TINY, seed=5)

    for chunk in encode_tensors(TINY, second, max_chunk_bytes=TINY_CHUNK_BYTES):
        assembler.add(chunk)
    received = assembler.finish()

    np.testing.assert_array_equal(received["w"], second["w"])
    np.testing.assert_array_equal(received["b"], second["b"])
    assert assembler.payload_bytes == 4 * 20


def test_weights_already_returned_do_not_change_when_the_assembler_is_reused() -> None:
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)
    first, second = random_weights(TINY, seed=1), random_weights(TINY, seed=2)

    received = []
    for weights in (first, second):
        assembler.reset()
        for chunk in encode_tensors(TINY, weights, max_chunk_bytes=TINY_CHUNK_BYTES):
            assembler.add(chunk)
        received.append(assembler.finish())

    np.testing.assert_array_equal(received[0]["w"], first["w"])
    np.testing.assert_array_equal(received[1]["w"], second["w"])


def test_reset_forgets_the_previous_stream() -> None:
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)
    for chunk in tiny_chunks()[:3]:
        assembler.add(chunk)

    assembler.reset()

    assert assembler.payload_bytes == 0
    with pytest.raises(InvalidInput, match=r"'w' \(no chunks\)"):
        assembler.finish()


def test_a_finished_assembler_must_be_reset_before_the_next_stream() -> None:
    assembler = TensorAssembler(TINY, allowed_encodings=BOTH)
    chunks = tiny_chunks()
    for chunk in chunks:
        assembler.add(chunk)
    assembler.finish()

    with pytest.raises(RuntimeError, match="reset"):
        assembler.add(chunks[0])


# --- Header-then-chunks streams ----------------------------------------------------------


def update_stream(
    *parts: regional_pb2.UpdateHeader | tensors_pb2.TensorChunk,
) -> list[regional_pb2.UpdateMessage]:
    return [
        regional_pb2.UpdateMessage(header=part)
        if isinstance(part, regional_pb2.UpdateHeader)
        else regional_pb2.UpdateMessage(chunk=part)
        for part in parts
    ]


def test_split_stream_reads_the_header_then_yields_the_chunks() -> None:
    header = regional_pb2.UpdateHeader(round=3, example_count=10, idempotency_key="k")
    chunks = tiny_chunks()

    got_header, got_chunks = split_stream(iter(update_stream(header, *chunks)))

    assert got_header == header
    assert list(got_chunks) == chunks


def test_split_stream_works_for_aggregate_messages_too() -> None:
    header = global_pb2.AggregateHeader(round=1, cohort_size=2, example_total=30, idempotency_key="k")
    chunk = tiny_chunks()[0]
    messages = [global_pb2.AggregateMessage(header=header), global_pb2.AggregateMessage(chunk=chunk)]

    got_header, got_chunks = split_stream(iter(messages))

    assert got_header == header
    assert list(got_chunks) == [chunk]


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([], id="empty"),
        pytest.param(update_stream(tiny_chunks()[0]), id="chunk-first"),
        pytest.param([regional_pb2.UpdateMessage()], id="blank-first"),
    ],
)
def test_a_stream_that_does_not_start_with_a_header_is_refused(
    messages: list[regional_pb2.UpdateMessage],
) -> None:
    with pytest.raises(InvalidInput, match="stream must start with a header"):
        split_stream(iter(messages))


def test_a_second_header_is_refused_where_it_appears() -> None:
    header = regional_pb2.UpdateHeader(round=1, example_count=1, idempotency_key="k")
    chunk = tiny_chunks()[0]
    _, chunks = split_stream(iter(update_stream(header, chunk, header)))

    assert next(chunks) == chunk
    with pytest.raises(InvalidInput, match="message 3 of the stream is a second header"):
        next(chunks)


def test_a_message_with_neither_header_nor_chunk_is_refused() -> None:
    header = regional_pb2.UpdateHeader(round=1, example_count=1, idempotency_key="k")
    messages = [*update_stream(header), regional_pb2.UpdateMessage()]
    _, chunks = split_stream(iter(messages))

    with pytest.raises(InvalidInput, match="neither a header nor a chunk"):
        list(chunks)
