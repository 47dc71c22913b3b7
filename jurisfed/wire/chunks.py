"""Tensors on the wire as streams of TensorChunk: encoded by the sender, assembled by the receiver.

A tensor travels as contiguous row-major slices of at most MAX_CHUNK_BYTES of payload, in one
of the encodings of encodings.py: RAW (little-endian float32), INT8 (one signed byte per value,
one scale per tensor), INT8_BLOCKS (one scale per block of values), or sparse (the (index, value)
pairs top-k kept, their values raw or int8 in blocks). The receiver decodes each chunk straight
into a buffer sized by the ModelSpec it expects, so the memory it holds is bounded by the model
and never by what a peer claims; the settings of the compressed encodings (block size, how many
values top-k keeps) come from the round's contract, and a chunk that disagrees is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, Protocol, TypeVar

import numpy as np

from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec, Weights
from jurisfed.wire import encodings
from jurisfed.wire.encodings import ENCODING_NAMES, Payload, PayloadRules
from jurisfed.wire.v1 import tensors_pb2

MAX_CHUNK_BYTES = 1 << 20

_DTYPE_NAMES: dict[int, str] = {value: name for name, value in tensors_pb2.DType.items()}
# Dimensions of a peer's shape an error message names: it goes back in the status details,
# which must fit an HTTP/2 trailer, and stays in the round's rejections.
_MAX_DIMS_SHOWN = 8
# The encodings encode_tensors produces by itself: they need no settings from a contract.
_SIMPLE_CODECS = {
    tensors_pb2.ENCODING_RAW: Codec(CodecKind.RAW),
    tensors_pb2.ENCODING_INT8: Codec(CodecKind.INT8),
}


def encode_tensors(
    spec: ModelSpec,
    weights: Mapping[str, FloatArray],
    *,
    encoding: tensors_pb2.Encoding.ValueType = tensors_pb2.ENCODING_RAW,
    rng: np.random.Generator | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[tensors_pb2.TensorChunk]:
    """The chunks of `weights` RAW or INT8, tensor by tensor in spec order, each at most max_chunk_bytes.

    An empty tensor is sent as one chunk without data, so the receiver sees it arrive.
    INT8 rounds stochastically and needs `rng`. Arguments are checked before the first chunk.
    Other encodings take settings from the contract: encode with a Codec (or ErrorFeedback),
    then send with encode_compressed.
    """
    codec = _SIMPLE_CODECS.get(encoding)
    if codec is None:
        raise ValueError(
            f"cannot encode tensors as {ENCODING_NAMES.get(encoding, encoding)} here: encode them with "
            "their Codec and send them with encode_compressed"
        )
    if codec.kind.stochastic and rng is None:
        raise ValueError(f"{ENCODING_NAMES[encoding]} rounds stochastically: pass rng")
    values_per_chunk = encodings.values_per_chunk(codec, max_chunk_bytes)
    spec.check(weights)
    encoded = ((t.name, codec.encode(weights[t.name], rng)) for t in spec.tensors)
    return _chunks(spec, encoded, values_per_chunk)


def encode_compressed(
    spec: ModelSpec, tensors: Mapping[str, EncodedTensor], *, max_chunk_bytes: int = MAX_CHUNK_BYTES
) -> Iterator[tensors_pb2.TensorChunk]:
    """The chunks of tensors a Codec or ErrorFeedback encoded (all with one codec), in spec order.

    Arguments are checked before the first chunk: the tensors must be the spec's, with its sizes.
    """
    names = [t.name for t in spec.tensors]
    if sorted(tensors) != sorted(names):
        raise InvalidInput(f"tensors {sorted(tensors)} do not match the model's {names}")
    codecs = {tensor.codec for tensor in tensors.values()}
    if len(codecs) > 1:
        raise ValueError(f"one stream, one codec; got {len(codecs)}")
    for tensor in spec.tensors:
        encoded_size = tensors[tensor.name].size
        if encoded_size != tensor.size:
            raise InvalidInput(
                f"tensor {tensor.name!r} was encoded from {encoded_size} values, expected {tensor.size}"
            )
    if not codecs:
        return iter(())
    values_per_chunk = encodings.values_per_chunk(codecs.pop(), max_chunk_bytes)
    return _chunks(spec, ((t.name, tensors[t.name]) for t in spec.tensors), values_per_chunk)


def _chunks(
    spec: ModelSpec, encoded: Iterator[tuple[str, EncodedTensor]], values_per_chunk: int
) -> Iterator[tensors_pb2.TensorChunk]:
    for tensor, (name, encoded_tensor) in zip(spec.tensors, encoded, strict=True):
        assert tensor.name == name
        count = encoded_tensor.values.size  # values, or (index, value) pairs when sparse
        # max(count, 1): an empty tensor still yields its one (empty) chunk.
        for offset in range(0, max(count, 1), values_per_chunk):
            stop = min(offset + values_per_chunk, count)
            yield tensors_pb2.TensorChunk(
                name=tensor.name,
                dtype=tensors_pb2.DTYPE_FLOAT32,
                shape=tensor.shape,
                offset=offset,
                **encodings.payload_fields(encoded_tensor, offset, stop),
            )


class _TensorBuffer:
    """One tensor's decoded values and how far the current stream has written them."""

    __slots__ = (
        "encoding",
        "filled",
        "last_index",
        "length",
        "name",
        "scale",
        "shape",
        "size",
        "started",
        "values",
    )
    values: FloatArray
    filled: int  # values (pairs, sparse) written so far; the offset the next chunk must start at
    length: int  # values (pairs, sparse) the stream carries for this tensor: its size, or kept
    started: bool
    encoding: int | None
    scale: float | None  # INT8 only: the scale every chunk of this tensor must repeat
    last_index: int  # sparse only: the last position written; the next must exceed it

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.shape = spec.shape
        self.size = spec.size
        self.values = np.empty(self.size, dtype=np.float32)
        self.clear()

    def clear(self) -> None:
        self.filled = 0
        self.length = self.size
        self.started = False
        self.encoding = None
        self.scale = None
        self.last_index = -1

    @property
    def complete(self) -> bool:
        return self.started and self.filled == self.length

    def progress(self) -> str:
        if not self.started:
            return f"{self.name!r} (no chunks)"
        if self.encoding in encodings.SPARSE:
            return f"{self.name!r} ({self.filled} of {self.length} kept pairs)"
        return f"{self.name!r} ({self.filled} of {self.size} values)"


class TensorAssembler:
    """Validates and decodes the chunks of one model-shaped stream into preallocated buffers.

    One stream at a time: add() every chunk, finish(), reset() before the next stream. The
    buffers are reused from stream to stream and never zeroed, since finish() requires every
    value to have been written (a sparse stream zeroes a tensor at its first chunk); finish()
    hands its buffers to the caller and takes fresh ones, so returned weights never change
    afterwards. A malformed chunk raises InvalidInput naming the tensor and changes nothing.

    allowed_encodings may hold RAW and INT8; `codec`, the round contract's codec for this hop,
    allows its own encoding too, with the block size and density every chunk must agree with.
    """

    def __init__(
        self, spec: ModelSpec, *, allowed_encodings: frozenset[int] = frozenset(), codec: Codec | None = None
    ) -> None:
        self._rules = PayloadRules(allowed_encodings, codec)
        self._spec = spec
        self._tensors = {tensor.name: _TensorBuffer(tensor) for tensor in spec.tensors}
        self._payload_bytes = 0
        self._finished = False
        self._withheld: frozenset[str] = frozenset()

    @property
    def payload_bytes(self) -> int:
        """Bytes of chunk payload (data, scales, indices) accepted since the last reset()."""
        return self._payload_bytes

    def reset(self, withheld: frozenset[str] = frozenset()) -> None:
        """Ready the assembler for the next stream, keeping its buffers.

        `withheld` names tensors the sender declared it leaves out: a chunk of one is refused,
        and the stream is complete without them.
        """
        unknown = sorted(withheld - self._tensors.keys())
        if unknown:
            raise InvalidInput(
                f"withheld tensors {[name[:100] for name in unknown[:5]]} are not part of model "
                f"{self._spec.architecture!r}"
            )
        if withheld and withheld >= self._tensors.keys():
            raise InvalidInput("a stream must carry at least one tensor; every tensor was declared withheld")
        for tensor in self._tensors.values():
            tensor.clear()
        self._payload_bytes = 0
        self._finished = False
        self._withheld = withheld

    def add(self, chunk: tensors_pb2.TensorChunk) -> None:
        if self._finished:
            raise RuntimeError("the stream was finished; reset() before the next one")
        tensor = self._tensors.get(chunk.name)
        if tensor is None:
            raise InvalidInput(
                f"tensor {chunk.name[:100]!r} is not part of model {self._spec.architecture!r}"
            )
        where = f"tensor {tensor.name!r}"
        if tensor.name in self._withheld:
            raise InvalidInput(f"{where} was declared withheld, yet a chunk of it arrived")
        if tensor.complete:
            raise InvalidInput(f"{where} is already complete; got another chunk at offset {chunk.offset}")
        if chunk.dtype != tensors_pb2.DTYPE_FLOAT32:
            raise InvalidInput(
                f"{where}: dtype {_DTYPE_NAMES.get(chunk.dtype, chunk.dtype)}, expected DTYPE_FLOAT32"
            )
        # The length first: a peer's shape may hold a million dimensions, never copied whole.
        if len(chunk.shape) != len(tensor.shape) or tuple(chunk.shape) != tensor.shape:
            raise InvalidInput(f"{where}: shape {_shape_text(chunk.shape)}, expected {list(tensor.shape)}")
        encoding = self._check_encoding(where, tensor, chunk.encoding)

        payload = Payload(chunk)
        count = self._rules.count(where, encoding, payload)
        length = self._rules.stream_length(where, encoding, payload, tensor.size)
        pairs = encoding in encodings.SPARSE
        if count == 0 and length > 0:
            raise InvalidInput(
                f"{where}: empty chunk at offset {payload.offset}; the tensor has {length} "
                + ("kept pairs" if pairs else "values")
            )
        if payload.offset != tensor.filled:
            raise InvalidInput(
                f"{where}: chunk at offset {payload.offset}, expected offset {tensor.filled} "
                "(a tensor's chunks arrive in order, without gaps or repeats)"
            )
        end = tensor.filled + count
        if end > length:
            raise InvalidInput(
                f"{where}: chunk of {count} {'pairs' if pairs else 'values'} at offset {payload.offset} "
                f"runs past the tensor's {length} {'kept pairs' if pairs else 'values'}"
            )

        self._decode(where, tensor, encoding, payload, end, last=end == length)
        tensor.encoding = encoding
        tensor.length = length
        tensor.filled = end
        tensor.started = True
        self._payload_bytes += payload.nbytes

    def staged(self) -> Weights:
        """The complete weights as views of this assembler's buffers, valid until reset().

        For folding an update straight into an accumulator without copying it first;
        InvalidInput naming what is missing when the stream is incomplete.
        """
        if self._finished:
            raise RuntimeError("the stream was finished; reset() before the next one")
        carried = [tensor for tensor in self._tensors.values() if tensor.name not in self._withheld]
        incomplete = [tensor.progress() for tensor in carried if not tensor.complete]
        if incomplete:
            raise InvalidInput(f"stream ended before these tensors were complete: {', '.join(incomplete)}")
        return {tensor.name: tensor.values.reshape(tensor.shape) for tensor in carried}

    def finish(self) -> Weights:
        """The complete weights in spec order, owned by the caller from now on."""
        weights = self.staged()
        for tensor in (self._tensors[name] for name in weights):
            # The caller owns the filled buffer now; the fresh one is only touched when written.
            tensor.values = np.empty(tensor.size, dtype=np.float32)
        self._finished = True
        return weights

    def _decode(
        self, where: str, tensor: _TensorBuffer, encoding: int, payload: Payload, end: int, *, last: bool
    ) -> None:
        """Write the chunk's values into the tensor's buffer, once every check has passed."""
        if encoding in encodings.SPARSE:
            tensor.last_index = encodings.decode_sparse(
                where,
                encoding,
                payload,
                self._rules.block_size,
                tensor.values,
                after_index=tensor.last_index,
                first=not tensor.started,
                last=last,
            )
            return
        target = tensor.values[tensor.filled : end]
        if encoding == tensors_pb2.ENCODING_RAW:
            encodings.decode_raw(where, payload.offset, payload.data, target)
        elif encoding == tensors_pb2.ENCODING_INT8:
            scale = self._check_scale(where, tensor, payload.scale)
            np.multiply(np.frombuffer(payload.data, dtype=np.int8), np.float32(scale), out=target)
            tensor.scale = scale
        else:
            assert self._rules.block_size is not None
            encodings.decode_int8_blocks(where, payload, self._rules.block_size, target, last=last)

    def _check_encoding(self, where: str, tensor: _TensorBuffer, encoding: int) -> int:
        if encoding not in self._rules.allowed:
            allowed = ", ".join(ENCODING_NAMES[e] for e in sorted(self._rules.allowed))
            raise InvalidInput(
                f"{where}: encoding {ENCODING_NAMES.get(encoding, encoding)} is not allowed here "
                f"(allowed: {allowed})"
            )
        if tensor.encoding is not None and encoding != tensor.encoding:
            raise InvalidInput(
                f"{where}: encoding changed from {ENCODING_NAMES[tensor.encoding]} to "
                f"{ENCODING_NAMES[encoding]} at offset {tensor.filled}"
            )
        return encoding

    @staticmethod
    def _check_scale(where: str, tensor: _TensorBuffer, scale: float) -> float:
        encodings.check_int8_scale(where, scale)
        if tensor.scale is not None and scale != tensor.scale:
            raise InvalidInput(
                f"{where}: INT8 scale {scale} at offset {tensor.filled} differs from the scale "
                f"{tensor.scale} of the tensor's earlier chunks"
            )
        return scale


def _shape_text(shape: Sequence[int]) -> str:
    """A shape as a list, its first dimensions only when it has more than _MAX_DIMS_SHOWN."""
    if len(shape) <= _MAX_DIMS_SHOWN:
        return str(list(shape))
    shown = ", ".join(str(dim) for dim in shape[:_MAX_DIMS_SHOWN])
    return f"[{shown}, ...] ({len(shape)} dimensions)"


_HeaderT_co = TypeVar("_HeaderT_co", covariant=True)


class HeaderThenChunks(Protocol[_HeaderT_co]):
    """A client-stream message whose oneof `part` is a header or a chunk.

    regional_pb2.UpdateMessage and global_pb2.AggregateMessage both are.
    """

    @property
    def header(self) -> _HeaderT_co: ...

    @property
    def chunk(self) -> tensors_pb2.TensorChunk: ...

    def WhichOneof(self, oneof_group: Literal["part"]) -> Literal["header", "chunk"] | None: ...


def split_stream(
    messages: Iterable[HeaderThenChunks[_HeaderT_co]],
) -> tuple[_HeaderT_co, Iterator[tensors_pb2.TensorChunk]]:
    """Read the stream's header now; the chunks follow lazily from the returned iterator.

    Raises InvalidInput when the stream does not start with a header, and, while iterating,
    when a second header or an empty message arrives.
    """
    stream = iter(messages)
    first = next(stream, None)
    if first is None:
        raise InvalidInput("stream must start with a header; it was empty")
    if first.WhichOneof("part") != "header":
        raise InvalidInput("stream must start with a header; the first message is not one")
    return first.header, _chunks_after_header(stream)


def _chunks_after_header(
    stream: Iterator[HeaderThenChunks[object]],
) -> Iterator[tensors_pb2.TensorChunk]:
    for position, message in enumerate(stream, start=2):
        part = message.WhichOneof("part")
        if part == "chunk":
            yield message.chunk
        elif part == "header":
            raise InvalidInput(f"message {position} of the stream is a second header; only the first may be")
        else:
            raise InvalidInput(f"message {position} of the stream holds neither a header nor a chunk")
