"""Tensors on the wire as streams of TensorChunk: encoded by the sender, assembled by the receiver.

A tensor travels as contiguous row-major slices of at most MAX_CHUNK_BYTES of payload, either
RAW (little-endian float32) or INT8 (one signed byte per value, one scale per tensor). The
receiver decodes each chunk straight into a buffer sized by the ModelSpec it expects, so the
memory it holds is bounded by the model and never by what a peer claims.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from jurisfed.compression import int8
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec, Weights
from jurisfed.wire.v1 import tensors_pb2

MAX_CHUNK_BYTES = 1 << 20

_BYTES_PER_VALUE: dict[int, int] = {tensors_pb2.ENCODING_RAW: 4, tensors_pb2.ENCODING_INT8: 1}
_ENCODING_NAMES: dict[int, str] = {value: name for name, value in tensors_pb2.Encoding.items()}
_DTYPE_NAMES: dict[int, str] = {value: name for name, value in tensors_pb2.DType.items()}
_RAW_DTYPE = np.dtype("<f4")
# |byte| * scale <= 128 * scale: a scale up to this bound decodes to finite float32 values only.
_MAX_INT8_SCALE = float(np.finfo(np.float32).max) / 128

# Encodes one flat tensor: (values in the wire's dtype, INT8 scale or 0).
_Encoder = Callable[[FloatArray], tuple[npt.NDArray[np.generic], float]]


def encode_tensors(
    spec: ModelSpec,
    weights: Mapping[str, FloatArray],
    *,
    encoding: tensors_pb2.Encoding.ValueType = tensors_pb2.ENCODING_RAW,
    rng: np.random.Generator | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[tensors_pb2.TensorChunk]:
    """The chunks of `weights`, tensor by tensor in spec order, each at most max_chunk_bytes.

    An empty tensor is sent as one chunk without data, so the receiver sees it arrive.
    INT8 rounds stochastically and needs `rng`. Arguments are checked before the first chunk.
    """
    encode = _encoder(encoding, rng)
    values_per_chunk = max_chunk_bytes // _BYTES_PER_VALUE[encoding]
    if values_per_chunk < 1:
        raise ValueError(
            f"max_chunk_bytes={max_chunk_bytes} cannot hold one {_ENCODING_NAMES[encoding]} value"
        )
    spec.check(weights)
    return _chunks(spec, weights, encoding, encode, values_per_chunk)


def _encoder(encoding: int, rng: np.random.Generator | None) -> _Encoder:
    if encoding == tensors_pb2.ENCODING_RAW:
        return _raw
    if encoding == tensors_pb2.ENCODING_INT8:
        if rng is None:
            raise ValueError("ENCODING_INT8 rounds stochastically: pass rng")
        return functools.partial(int8.quantize, rng=rng)
    raise ValueError(f"cannot encode tensors as {_ENCODING_NAMES.get(encoding, encoding)}")


def _raw(values: FloatArray) -> tuple[npt.NDArray[np.generic], float]:
    return values, 0.0


def _chunks(
    spec: ModelSpec,
    weights: Mapping[str, FloatArray],
    encoding: tensors_pb2.Encoding.ValueType,
    encode: _Encoder,
    values_per_chunk: int,
) -> Iterator[tensors_pb2.TensorChunk]:
    for tensor in spec.tensors:
        # Flat, contiguous and little-endian: no copy when the array already is.
        values = np.ascontiguousarray(weights[tensor.name], dtype=_RAW_DTYPE).reshape(-1)
        flat, scale = encode(values)
        # max(size, 1): an empty tensor still yields its one (empty) chunk.
        for offset in range(0, max(flat.size, 1), values_per_chunk):
            yield tensors_pb2.TensorChunk(
                name=tensor.name,
                dtype=tensors_pb2.DTYPE_FLOAT32,
                shape=tensor.shape,
                offset=offset,
                encoding=encoding,
                scale=scale,
                data=flat[offset : offset + values_per_chunk].tobytes(),
            )


class _TensorBuffer:
    """One tensor's decoded values and how far the current stream has written them."""

    __slots__ = ("encoding", "filled", "name", "scale", "shape", "size", "started", "values")
    values: FloatArray
    filled: int  # values written so far; the offset the next chunk must start at
    started: bool
    encoding: int | None
    scale: float | None  # INT8 only: the scale every chunk of this tensor must repeat

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.shape = spec.shape
        self.size = spec.size
        self.values = np.empty(self.size, dtype=np.float32)
        self.clear()

    def clear(self) -> None:
        self.filled = 0
        self.started = False
        self.encoding = None
        self.scale = None

    @property
    def complete(self) -> bool:
        return self.started and self.filled == self.size

    def progress(self) -> str:
        if not self.started:
            return f"{self.name!r} (no chunks)"
        return f"{self.name!r} ({self.filled} of {self.size} values)"


class TensorAssembler:
    """Validates and decodes the chunks of one model-shaped stream into preallocated buffers.

    One stream at a time: add() every chunk, finish(), reset() before the next stream. The
    buffers are reused from stream to stream and never zeroed, since finish() requires every
    value to have been written; finish() hands its buffers to the caller and takes fresh ones,
    so returned weights never change afterwards. A malformed chunk raises InvalidInput naming
    the tensor and changes nothing.
    """

    def __init__(self, spec: ModelSpec, *, allowed_encodings: frozenset[int]) -> None:
        unsupported = sorted(allowed_encodings - _BYTES_PER_VALUE.keys())
        if not allowed_encodings or unsupported:
            raise ValueError(f"allowed_encodings must be a non-empty subset of {sorted(_BYTES_PER_VALUE)}")
        self._spec = spec
        self._allowed_encodings = allowed_encodings
        self._tensors = {tensor.name: _TensorBuffer(tensor) for tensor in spec.tensors}
        self._payload_bytes = 0
        self._finished = False

    @property
    def payload_bytes(self) -> int:
        """Bytes of chunk data accepted since the last reset()."""
        return self._payload_bytes

    def reset(self) -> None:
        """Ready the assembler for the next stream, keeping its buffers."""
        for tensor in self._tensors.values():
            tensor.clear()
        self._payload_bytes = 0
        self._finished = False

    def add(self, chunk: tensors_pb2.TensorChunk) -> None:
        if self._finished:
            raise RuntimeError("the stream was finished; reset() before the next one")
        tensor = self._tensors.get(chunk.name)
        if tensor is None:
            raise InvalidInput(
                f"tensor {chunk.name[:100]!r} is not part of model {self._spec.architecture!r}"
            )
        where = f"tensor {tensor.name!r}"
        if tensor.complete:
            raise InvalidInput(f"{where} is already complete; got another chunk at offset {chunk.offset}")
        if chunk.dtype != tensors_pb2.DTYPE_FLOAT32:
            raise InvalidInput(
                f"{where}: dtype {_DTYPE_NAMES.get(chunk.dtype, chunk.dtype)}, expected DTYPE_FLOAT32"
            )
        shape = tuple(chunk.shape)
        if shape != tensor.shape:
            raise InvalidInput(f"{where}: shape {list(shape)}, expected {list(tensor.shape)}")
        encoding = self._check_encoding(where, tensor, chunk.encoding)

        data = chunk.data  # protobuf copies bytes on every access: read it once
        count, partial = divmod(len(data), _BYTES_PER_VALUE[encoding])
        if partial:
            raise InvalidInput(
                f"{where}: {len(data)} bytes of {_ENCODING_NAMES[encoding]} data is not a whole "
                f"number of {_BYTES_PER_VALUE[encoding]}-byte values"
            )
        if count == 0 and tensor.size > 0:
            raise InvalidInput(
                f"{where}: empty chunk at offset {chunk.offset}; the tensor has {tensor.size} values"
            )
        if chunk.offset != tensor.filled:
            raise InvalidInput(
                f"{where}: chunk at offset {chunk.offset}, expected offset {tensor.filled} "
                "(a tensor's chunks arrive in order, without gaps or repeats)"
            )
        end = tensor.filled + count
        if end > tensor.size:
            raise InvalidInput(
                f"{where}: chunk of {count} values at offset {chunk.offset} runs past the tensor's "
                f"{tensor.size} values"
            )

        target = tensor.values[tensor.filled : end]
        if encoding == tensors_pb2.ENCODING_RAW:
            _decode_raw(where, chunk.offset, data, target)
        else:
            scale = self._check_scale(where, tensor, chunk.scale)
            np.multiply(np.frombuffer(data, dtype=np.int8), np.float32(scale), out=target)
            tensor.scale = scale
        tensor.encoding = encoding
        tensor.filled = end
        tensor.started = True
        self._payload_bytes += len(data)

    def staged(self) -> Weights:
        """The complete weights as views of this assembler's buffers, valid until reset().

        For folding an update straight into an accumulator without copying it first;
        InvalidInput naming what is missing when the stream is incomplete.
        """
        if self._finished:
            raise RuntimeError("the stream was finished; reset() before the next one")
        incomplete = [tensor.progress() for tensor in self._tensors.values() if not tensor.complete]
        if incomplete:
            raise InvalidInput(f"stream ended before these tensors were complete: {', '.join(incomplete)}")
        return {tensor.name: tensor.values.reshape(tensor.shape) for tensor in self._tensors.values()}

    def finish(self) -> Weights:
        """The complete weights in spec order, owned by the caller from now on."""
        weights = self.staged()
        for tensor in self._tensors.values():
            # The caller owns the filled buffer now; the fresh one is only touched when written.
            tensor.values = np.empty(tensor.size, dtype=np.float32)
        self._finished = True
        return weights

    def _check_encoding(self, where: str, tensor: _TensorBuffer, encoding: int) -> int:
        if encoding not in self._allowed_encodings:
            allowed = ", ".join(_ENCODING_NAMES[e] for e in sorted(self._allowed_encodings))
            raise InvalidInput(
                f"{where}: encoding {_ENCODING_NAMES.get(encoding, encoding)} is not allowed here "
                f"(allowed: {allowed})"
            )
        if tensor.encoding is not None and encoding != tensor.encoding:
            raise InvalidInput(
                f"{where}: encoding changed from {_ENCODING_NAMES[tensor.encoding]} to "
                f"{_ENCODING_NAMES[encoding]} at offset {tensor.filled}"
            )
        return encoding

    @staticmethod
    def _check_scale(where: str, tensor: _TensorBuffer, scale: float) -> float:
        if not (math.isfinite(scale) and scale >= 0):
            raise InvalidInput(f"{where}: INT8 scale {scale} is not a finite non-negative number")
        if scale > _MAX_INT8_SCALE:
            raise InvalidInput(f"{where}: INT8 scale {scale} would decode to values that overflow float32")
        if tensor.scale is not None and scale != tensor.scale:
            raise InvalidInput(
                f"{where}: INT8 scale {scale} at offset {tensor.filled} differs from the scale "
                f"{tensor.scale} of the tensor's earlier chunks"
            )
        return scale


def _decode_raw(where: str, offset: int, data: bytes, target: FloatArray) -> None:
    values = np.frombuffer(data, dtype=_RAW_DTYPE)
    # One BLAS pass: a NaN or Inf anywhere makes the dot product non-finite. So do values
    # whose squares overflow float32 (|x| > 1.8e19), which no model weight or delta has.
    if not math.isfinite(np.dot(values, values)):
        raise InvalidInput(
            f"{where}: chunk at offset {offset} holds NaN or infinite values, or values too large "
            "to aggregate (overflowing float32)"
        )
    target[...] = values


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
