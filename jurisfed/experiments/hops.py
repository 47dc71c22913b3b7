"""One hop of the federation as the wire sees it: encode, sign, frame, count the bytes, decode.

A sender encodes its delta with the hop's codec (through its own ErrorFeedback residual when
the hop keeps one), cuts it into the tiers' TensorChunks (`jurisfed.wire.chunks`), signs the
chunk digest with a P-256 key as the tiers' ContentSigner does, and wraps header and chunks in
the hop's stream messages (silo -> regional: UpdateMessage; regional -> global:
AggregateMessage). Bytes are counted by the tiers' own `Meter`: serialized protobuf size plus
gRPC's 5-byte message framing, header included. The receiver decodes with the tiers'
`TensorAssembler` under the hop's codec, so what the next tier aggregates is exactly what it
would have reconstructed from the wire. No gRPC channel is opened: the messages are built and
measured, not sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.compression.codec import Codec, CodecKind, EncodedTensor
from jurisfed.compression.error_feedback import ErrorFeedback
from jurisfed.rounds import AggregateHeader, UpdateHeader
from jurisfed.tensors import FloatArray, ModelSpec, Weights
from jurisfed.wire import serde
from jurisfed.wire.chunks import TensorAssembler, encode_compressed
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import global_pb2, regional_pb2, tensors_pb2

RAW = Codec(CodecKind.RAW)


@dataclass(frozen=True)
class HopCodec:
    """A hop's codec and whether its sender keeps an error-feedback residual."""

    codec: Codec = RAW
    error_feedback: bool = False

    @property
    def label(self) -> str:
        kind = self.codec.kind
        text = kind.value
        if kind.sparse:
            text += f" (density {self.codec.density:g})"
        if kind is not CodecKind.RAW:
            text += " + EF" if self.error_feedback else ", no EF"
        return text


@dataclass(frozen=True)
class Delivery:
    received: Weights  # what the receiving tier decoded
    wire_bytes: int  # header and chunk messages, serialized, plus gRPC framing


class HopSender:
    """One sender on one hop (a silo, or a regional towards the global)."""

    def __init__(self, identity: Identity, spec: ModelSpec, hop: HopCodec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.hop = hop
        self._rng = rng
        self._signer = ContentSigner(ec.generate_private_key(ec.SECP256R1()), identity)
        self._residual = ErrorFeedback(spec) if hop.error_feedback else None
        self._receiver = TensorAssembler(spec, codec=hop.codec)

    def _encode(self, delta: Mapping[str, FloatArray]) -> list[tensors_pb2.TensorChunk]:
        codec = self.hop.codec
        rng = self._rng if codec.kind.stochastic else None
        if self._residual is not None:
            encoded = self._residual.compress(delta, codec, rng)
        else:
            encoded = {t.name: codec.encode(delta[t.name], rng) for t in self.spec.tensors}
        return list(encode_compressed(self.spec, _in_spec_order(self.spec, encoded)))

    def _decode(self, chunks: list[tensors_pb2.TensorChunk]) -> Weights:
        self._receiver.reset()
        for chunk in chunks:
            self._receiver.add(chunk)
        return self._receiver.finish()

    def send_update(self, round_number: int, delta: Mapping[str, FloatArray], example_count: int) -> Delivery:
        """silo -> regional: UpdateMessage(header), then UpdateMessage(chunk) each."""
        chunks = self._encode(delta)
        header = UpdateHeader(
            round=round_number,
            example_count=example_count,
            idempotency_key=f"{round_number}-{self._signer.identity.node}",
            train_loss=0.0,
            content_signature=self._signer.sign(round_number, digest_chunks(chunks)),
        )
        meter = Meter()
        meter.count(regional_pb2.UpdateMessage(header=serde.update_header_to_proto(header)))
        for chunk in chunks:
            meter.count(regional_pb2.UpdateMessage(chunk=chunk))
        return Delivery(self._decode(chunks), meter.total_bytes)

    def send_aggregate(
        self, round_number: int, delta: Mapping[str, FloatArray], cohort_size: int, example_total: int
    ) -> Delivery:
        """regional -> global: AggregateMessage(header), then AggregateMessage(chunk) each."""
        chunks = self._encode(delta)
        header = AggregateHeader(
            round=round_number,
            cohort_size=cohort_size,
            example_total=example_total,
            idempotency_key=f"{round_number}-{self._signer.identity.jurisdiction.lower()}",
            compression=self.hop.codec.kind.value,
            content_signature=self._signer.sign(round_number, digest_chunks(chunks)),
        )
        meter = Meter()
        meter.count(global_pb2.AggregateMessage(header=serde.aggregate_header_to_proto(header)))
        for chunk in chunks:
            meter.count(global_pb2.AggregateMessage(chunk=chunk))
        return Delivery(self._decode(chunks), meter.total_bytes)


def silo_identity(jurisdiction: str, silo_name: str) -> Identity:
    return Identity(jurisdiction, Tier.SILO, silo_name)


def regional_identity(jurisdiction: str) -> Identity:
    return Identity(jurisdiction, Tier.REGIONAL, "regional")


def _in_spec_order(spec: ModelSpec, encoded: Mapping[str, EncodedTensor]) -> dict[str, EncodedTensor]:
    return {t.name: encoded[t.name] for t in spec.tensors}
