"""Receiving a whole model from a stream of chunks, and checking it is the one announced."""

from __future__ import annotations

from collections.abc import Iterable

from jurisfed.errors import InvalidInput
from jurisfed.tensors import ModelSpec, Weights, weights_sha256
from jurisfed.wire.chunks import TensorAssembler
from jurisfed.wire.v1 import tensors_pb2


def receive_model(
    chunks: Iterable[tensors_pb2.TensorChunk], spec: ModelSpec, expected_sha256: str
) -> Weights:
    """Assemble raw float32 chunks into weights; InvalidInput unless they hash to `expected_sha256`."""
    assembler = TensorAssembler(spec, allowed_encodings=frozenset({tensors_pb2.ENCODING_RAW}))
    for chunk in chunks:
        assembler.add(chunk)
    weights = assembler.finish()
    if weights_sha256(spec, weights) != expected_sha256:
        raise InvalidInput("the model received does not match the hash announced for the round")
    return weights
