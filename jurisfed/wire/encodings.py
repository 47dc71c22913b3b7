"""The payload of a TensorChunk in each wire encoding: how a sender lays encoded values out,
and how a receiver checks a chunk against the round's contract before decoding a byte of it.

chunks.py runs the stream (names, shapes, order, completeness); this module knows what each
encoding's fields hold (docs/wire-format.md says the same in prose):

  encoding             data                 scales (<f4)           indices (<u4)   other
  RAW                  <f4 per value        -                      -               -
  INT8                 int8 per value       -                      -               scale
  INT8_BLOCKS          int8 per value       one per block touched  -               block_size
  SPARSE_RAW           <f4 per kept value   -                      one per value   kept
  SPARSE_INT8_BLOCKS   int8 per kept value  one per block touched  one per value   kept, block_size

A receiver takes block_size and kept only when they equal what its contract (the Codec) fixes,
so no number from the peer sizes an allocation or a loop beyond the model's spec.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np

from jurisfed.compression.codec import DEFAULT_BLOCK_SIZE, Codec, CodecKind, EncodedTensor
from jurisfed.compression.int8 import block_count, dequantize_blocks_into
from jurisfed.compression.topk import INDEX_DTYPE, UInt32Array, kept_count
from jurisfed.errors import InvalidInput
from jurisfed.tensors import FloatArray
from jurisfed.wire.v1 import tensors_pb2

ENCODING_NAMES: dict[int, str] = {value: name for name, value in tensors_pb2.Encoding.items()}
RAW_DTYPE = np.dtype("<f4")
# |byte| * scale <= 128 * scale: a scale up to this bound decodes to finite float32 values only.
MAX_INT8_SCALE = float(np.finfo(np.float32).max) / 128

RAW = tensors_pb2.ENCODING_RAW
INT8 = tensors_pb2.ENCODING_INT8
INT8_BLOCKS = tensors_pb2.ENCODING_INT8_BLOCKS
SPARSE_RAW = tensors_pb2.ENCODING_SPARSE_RAW
SPARSE_INT8_BLOCKS = tensors_pb2.ENCODING_SPARSE_INT8_BLOCKS
ENCODING_OF: dict[CodecKind, tensors_pb2.Encoding.ValueType] = {
    CodecKind.RAW: RAW,
    CodecKind.INT8: INT8,
    CodecKind.INT8_BLOCKS: INT8_BLOCKS,
    CodecKind.TOP_K: SPARSE_RAW,
    CodecKind.TOP_K_INT8: SPARSE_INT8_BLOCKS,
}
KIND_OF: dict[int, CodecKind] = {encoding: kind for kind, encoding in ENCODING_OF.items()}
SPARSE = frozenset({SPARSE_RAW, SPARSE_INT8_BLOCKS})
BLOCKED = frozenset({INT8_BLOCKS, SPARSE_INT8_BLOCKS})
VALUE_BYTES: dict[int, int] = {RAW: 4, INT8: 1, INT8_BLOCKS: 1, SPARSE_RAW: 4, SPARSE_INT8_BLOCKS: 1}
_INDEX_BYTES = 4
_SCALE_BYTES = 4


# --- The contract ------------------------------------------------------------------------


def codec_to_proto(codec: Codec) -> tensors_pb2.Codec:
    message = tensors_pb2.Codec(encoding=ENCODING_OF[codec.kind])
    if codec.kind.sparse:
        message.density = codec.density
    if codec.kind.blocked:
        message.block_size = codec.block_size
    return message


def codec_from_proto(message: tensors_pb2.Codec) -> Codec:
    """The Codec a contract names; InvalidInput for an unknown encoding or settings out of range."""
    kind = KIND_OF.get(message.encoding)
    if kind is None:
        raise InvalidInput(
            f"codec encoding {ENCODING_NAMES.get(message.encoding, message.encoding)} is unknown"
        )
    try:
        return Codec(
            kind,
            density=message.density if kind.sparse else 1.0,
            block_size=message.block_size if kind.blocked else DEFAULT_BLOCK_SIZE,
        )
    except ValueError as error:
        raise InvalidInput(f"codec: {error}") from error


# --- Sending -----------------------------------------------------------------------------


def values_per_chunk(codec: Codec, max_chunk_bytes: int) -> int:
    """Values (pairs, when sparse) one chunk carries: as many as fit; whole blocks when blocked."""
    encoding = ENCODING_OF[codec.kind]
    per_value = VALUE_BYTES[encoding] + (_INDEX_BYTES if encoding in SPARSE else 0)
    if encoding in BLOCKED:
        per_block = codec.block_size * per_value + _SCALE_BYTES
        count = max_chunk_bytes // per_block * codec.block_size
        what = f"one {ENCODING_NAMES[encoding]} block of {codec.block_size} values and its scale"
    else:
        count = max_chunk_bytes // per_value
        what = f"one {ENCODING_NAMES[encoding]} value"
    if count < 1:
        raise ValueError(f"max_chunk_bytes={max_chunk_bytes} cannot hold {what}")
    return count


class PayloadFields(TypedDict, total=False):
    encoding: tensors_pb2.Encoding.ValueType
    scale: float
    data: bytes
    block_size: int
    scales: bytes
    indices: bytes
    kept: int


def payload_fields(tensor: EncodedTensor, start: int, stop: int) -> PayloadFields:
    """The payload of the chunk carrying values (pairs) [start, stop) of `tensor`."""
    codec = tensor.codec
    fields = PayloadFields(encoding=ENCODING_OF[codec.kind], data=tensor.values[start:stop].tobytes())
    if codec.kind is CodecKind.INT8:
        fields["scale"] = float(tensor.scales[0])
    if codec.kind.blocked:
        fields["block_size"] = codec.block_size
        blocks = slice(start // codec.block_size, block_count(stop, codec.block_size))
        fields["scales"] = tensor.scales[blocks].tobytes()
    if tensor.indices is not None:
        fields["indices"] = tensor.indices[start:stop].tobytes()
        fields["kept"] = tensor.indices.size
    return fields


# --- Receiving ---------------------------------------------------------------------------


class Payload:
    """A chunk's payload fields, each read once (protobuf copies bytes on every access)."""

    __slots__ = ("block_size", "data", "indices", "kept", "offset", "scale", "scales")

    def __init__(self, chunk: tensors_pb2.TensorChunk) -> None:
        self.offset = chunk.offset
        self.data = chunk.data
        self.scale = chunk.scale
        self.block_size = chunk.block_size
        self.scales = chunk.scales
        self.indices = chunk.indices
        self.kept = chunk.kept

    @property
    def nbytes(self) -> int:
        return len(self.data) + len(self.scales) + len(self.indices)


# Fields an encoding does not use: a chunk that sets them is malformed. (A RAW chunk's `scale`
# has always been ignored, and still is; RAW and INT8 are checked for the newer fields only.)
_UNUSED_FIELDS: dict[int, tuple[str, ...]] = {
    RAW: ("block_size", "scales", "indices", "kept"),
    INT8: ("block_size", "scales", "indices", "kept"),
    INT8_BLOCKS: ("scale", "indices", "kept"),
    SPARSE_RAW: ("scale", "block_size", "scales"),
    SPARSE_INT8_BLOCKS: ("scale",),
}


class PayloadRules:
    """The encodings a receiver allows, with what its contract fixes: block size and density.

    RAW and INT8 need no settings. The other encodings are allowed only through the contract's
    Codec, whose block size and density every chunk must then agree with.
    """

    def __init__(self, allowed_encodings: frozenset[int], codec: Codec | None) -> None:
        contracted = {ENCODING_OF[codec.kind]} if codec is not None else set()
        unsupported = allowed_encodings - {RAW, INT8} - contracted
        if unsupported:
            names = ", ".join(ENCODING_NAMES.get(e, str(e)) for e in sorted(unsupported))
            raise ValueError(f"{names}: allowed only through the contract's codec, which has the settings")
        self.allowed = allowed_encodings | contracted
        if not self.allowed:
            raise ValueError("allow at least one encoding: allowed_encodings or a codec")
        self.block_size = codec.block_size if codec is not None and codec.kind.blocked else None
        self.density = codec.density if codec is not None and codec.kind.sparse else None

    def count(self, where: str, encoding: int, payload: Payload) -> int:
        """Values (pairs, when sparse) in the chunk, once its fields agree with each other."""
        name = ENCODING_NAMES[encoding]
        for field in _UNUSED_FIELDS[encoding]:
            if getattr(payload, field):
                raise InvalidInput(f"{where}: {name} does not use field '{field}'; it must be empty")
        if encoding in BLOCKED and payload.block_size != self.block_size:
            raise InvalidInput(
                f"{where}: block_size {payload.block_size}, the contract's block size is {self.block_size}"
            )
        if encoding in SPARSE:
            count, partial = divmod(len(payload.indices), _INDEX_BYTES)
            if partial:
                raise InvalidInput(
                    f"{where}: {len(payload.indices)} bytes of indices is not a whole number of "
                    f"{_INDEX_BYTES}-byte indices"
                )
            if len(payload.data) != count * VALUE_BYTES[encoding]:
                raise InvalidInput(
                    f"{where}: {len(payload.data)} bytes of {name} values for {count} indices; expected "
                    f"{count * VALUE_BYTES[encoding]}"
                )
        else:
            count, partial = divmod(len(payload.data), VALUE_BYTES[encoding])
            if partial:
                raise InvalidInput(
                    f"{where}: {len(payload.data)} bytes of {name} data is not a whole number of "
                    f"{VALUE_BYTES[encoding]}-byte values"
                )
        if self.block_size is not None and encoding in BLOCKED:
            blocks = block_count(count, self.block_size)
            if len(payload.scales) != blocks * _SCALE_BYTES:
                raise InvalidInput(
                    f"{where}: {len(payload.scales)} bytes of scales for {count} values in blocks of "
                    f"{self.block_size}; expected {blocks * _SCALE_BYTES} ({blocks} scales)"
                )
        return count

    def stream_length(self, where: str, encoding: int, payload: Payload, size: int) -> int:
        """Values (pairs, when sparse) the tensor's chunks carry in all: its size, or `kept`."""
        if encoding not in SPARSE:
            return size
        assert self.density is not None
        if not 0 <= payload.kept <= size:
            raise InvalidInput(f"{where}: kept {payload.kept} pairs, beyond the tensor's {size} values")
        expected = kept_count(size, self.density)
        if payload.kept != expected:
            raise InvalidInput(
                f"{where}: kept {payload.kept} pairs; the contract's density {self.density} keeps "
                f"{expected} of {size} values"
            )
        return expected


def decode_raw(where: str, offset: int, data: bytes, target: FloatArray) -> None:
    values = np.frombuffer(data, dtype=RAW_DTYPE)
    _check_finite(where, f"chunk at offset {offset}", values)
    target[...] = values


def check_int8_scale(where: str, scale: float) -> float:
    if not (math.isfinite(scale) and scale >= 0):
        raise InvalidInput(f"{where}: INT8 scale {scale} is not a finite non-negative number")
    if scale > MAX_INT8_SCALE:
        raise InvalidInput(f"{where}: INT8 scale {scale} would decode to values that overflow float32")
    return scale


def decode_int8_blocks(
    where: str, payload: Payload, block_size: int, target: FloatArray, *, last: bool
) -> None:
    """Decode an INT8_BLOCKS chunk into `target` (its slice of the tensor)."""
    _check_whole_blocks(where, payload.offset, target.size, block_size, last=last)
    scales = _block_scales(where, payload.scales)
    dequantize_blocks_into(np.frombuffer(payload.data, dtype=np.int8), scales, block_size, target)


def decode_sparse(
    where: str,
    encoding: int,
    payload: Payload,
    block_size: int | None,
    tensor: FloatArray,
    *,
    after_index: int,
    first: bool,
    last: bool,
) -> int:
    """Check a sparse chunk's pairs and write them into the dense `tensor`; the last index written.

    Indices must exceed `after_index` (the previous chunk's last) and increase strictly, so no
    position is written twice. The first chunk of a stream zeroes the tensor first: what top-k
    dropped decodes to zero. Nothing is written unless the whole chunk is valid.
    """
    indices: UInt32Array = np.frombuffer(payload.indices, dtype=INDEX_DTYPE)
    if indices.size:
        if int(indices[0]) <= after_index:
            raise InvalidInput(
                f"{where}: index {int(indices[0])} at pair {payload.offset} does not exceed the previous "
                f"index {after_index} (indices must increase strictly: no repeats, no going back)"
            )
        if indices.size > 1 and not np.all(indices[1:] > indices[:-1]):
            bad = int(np.flatnonzero(indices[1:] <= indices[:-1])[0]) + 1
            raise InvalidInput(
                f"{where}: index {int(indices[bad])} at pair {payload.offset + bad} does not exceed the "
                f"previous index {int(indices[bad - 1])} (indices must increase strictly: no repeats, "
                "no going back)"
            )
        if int(indices[-1]) >= tensor.size:
            raise InvalidInput(
                f"{where}: index {int(indices[-1])} is out of range for a tensor of {tensor.size} values"
            )
    if encoding == SPARSE_RAW:
        values = np.frombuffer(payload.data, dtype=RAW_DTYPE)
        _check_finite(where, f"chunk at pair {payload.offset}", values)
    else:
        assert block_size is not None
        _check_whole_blocks(where, payload.offset, indices.size, block_size, last=last)
        scales = _block_scales(where, payload.scales)
        values = np.empty(indices.size, dtype=np.float32)
        dequantize_blocks_into(np.frombuffer(payload.data, dtype=np.int8), scales, block_size, values)
    if first:
        tensor.fill(0.0)
    tensor[indices] = values
    return int(indices[-1]) if indices.size else after_index


def _check_whole_blocks(where: str, offset: int, count: int, block_size: int, *, last: bool) -> None:
    # Every chunk but the tensor's last holds whole blocks, so each chunk starts on a block.
    if not last and count % block_size:
        raise InvalidInput(
            f"{where}: chunk at offset {offset} holds {count} values, not whole blocks of {block_size}; "
            "only the tensor's last chunk may end inside a block"
        )


def _block_scales(where: str, data: bytes) -> FloatArray:
    scales = np.frombuffer(data, dtype=RAW_DTYPE)
    if scales.size and not (np.isfinite(scales).all() and scales.min() >= 0):
        raise InvalidInput(f"{where}: block scales must be finite non-negative numbers; some are not")
    if scales.size and scales.max() > MAX_INT8_SCALE:
        raise InvalidInput(
            f"{where}: a block scale {scales.max()} would decode to values that overflow float32"
        )
    return scales


def _check_finite(where: str, what: str, values: FloatArray) -> None:
    # One BLAS pass: a NaN or Inf anywhere makes the dot product non-finite. So do values
    # whose squares overflow float32 (|x| > 1.8e19), which no model weight or delta has.
    if not math.isfinite(np.dot(values, values)):
        raise InvalidInput(
            f"{where}: {what} holds NaN or infinite values, or values too large to aggregate "
            "(overflowing float32)"
        )
