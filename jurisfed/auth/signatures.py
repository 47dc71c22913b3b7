"""Signed updates and aggregates: who sent which content for which round, provably.

The sender signs the statement (round, its identity URI, SHA-256 of the content) with the
EC P-256 key of its TLS certificate (ECDSA with SHA-256, DER signature). The receiver
verifies it against the sender's certificate, which is the mTLS peer certificate of the
upload, so a signature proves the content came from the node the connection authenticated,
for that round, unaltered; and the receiver can record (statement, signature, certificate)
as evidence that a third party can check later.

The content digest is computed over the TensorChunks as they stream (`ChunkDigest`), in a
canonical byte encoding of each chunk, so neither side has to hold the whole update to hash
it. `verified_chunks` passes chunks through to the consumer and verifies the signature after
the last one, raising before the consumer's loop ends: an intake that folds an update only
once its stream is exhausted never folds a mis-signed one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from jurisfed.auth.identity import PEER_CERT_KEY, Identity, identity_from_certificate
from jurisfed.auth.pki import TlsFiles
from jurisfed.errors import ConfigError, InvalidInput, Unauthenticated
from jurisfed.wire.v1 import tensors_pb2

# Domain separation: these bytes can never be mistaken for another signed jurisfed message.
STATEMENT_CONTEXT = b"jurisfed/signed-content/v1\x00"
DIGEST_BYTES = 32
# A DER ECDSA P-256 signature is at most 72 bytes.
MAX_SIGNATURE_BYTES = 80
_MAX_ROUND = (1 << 63) - 1
_MAX_SENDER_BYTES = 0xFFFF
_CHUNK_CONTEXT = b"jurisfed/tensor-chunks/v1\x00"


@dataclass(frozen=True)
class SignedStatement:
    """What a signature covers: this content, from this sender, for this round."""

    round: int
    sender: str  # identity URI, e.g. jurisfed://EU/silo/hospital-a
    content_sha256: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.round <= _MAX_ROUND:
            raise InvalidInput(f"round {self.round} is outside 0..2^63-1")
        if len(self.content_sha256) != DIGEST_BYTES:
            raise InvalidInput(f"content digest must be {DIGEST_BYTES} bytes, not {len(self.content_sha256)}")
        if len(self.sender.encode()) > _MAX_SENDER_BYTES:
            raise InvalidInput("sender identity is too long")

    def canonical_bytes(self) -> bytes:
        """Context, round (8 bytes), sender length (2 bytes) and UTF-8, digest (32): unambiguous."""
        sender = self.sender.encode()
        return b"".join(
            (
                STATEMENT_CONTEXT,
                struct.pack(">QH", self.round, len(sender)),
                sender,
                self.content_sha256,
            )
        )


@dataclass(frozen=True)
class VerifiedSignature:
    """Evidence to record: the statement, its signature and the certificate that verified it."""

    statement: SignedStatement
    signature: bytes
    certificate_pem: bytes


class ContentSigner:
    """Signs this node's content with the key of its TLS certificate."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, identity: Identity) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"signing key must be on curve P-256, not {key.curve.name}")
        self._key = key
        self.identity = identity

    @classmethod
    def from_tls_files(cls, tls: TlsFiles) -> ContentSigner:
        """The signer of the node whose certificate and key `tls` names; refuses a mismatched pair."""
        _, cert_pem, key_pem = tls.read()
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{tls.key} is not an unencrypted PEM private key") from None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise ConfigError(f"{tls.cert} is not a PEM certificate") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{tls.key} is not an EC private key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise ConfigError(f"{tls.key} does not belong to {tls.cert}")
        try:
            identity = identity_from_certificate(cert)
        except Unauthenticated as error:
            raise ConfigError(f"certificate {tls.cert}: {error}") from None
        return cls(key, identity)

    def sign(self, round_number: int, content_sha256: bytes) -> bytes:
        """The DER signature over (round_number, this node, content_sha256)."""
        statement = SignedStatement(round_number, self.identity.uri, content_sha256)
        return self._key.sign(statement.canonical_bytes(), ec.ECDSA(hashes.SHA256()))


def verify_signature(
    statement: SignedStatement, signature: bytes, certificate_pem: bytes
) -> VerifiedSignature:
    """Check that the holder of `certificate_pem` signed `statement`; `Unauthenticated` otherwise.

    The certificate must be one the caller already trusts (the mTLS peer certificate of the
    upload) and must name `statement.sender`.
    """
    where = f"content signature of {statement.sender} for round {statement.round}"
    if not signature:
        raise Unauthenticated(f"{where} is missing: unsigned content is refused")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise Unauthenticated(f"{where} is {len(signature)} bytes; an ECDSA P-256 signature has at most 72")
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise Unauthenticated(f"{where}: the sender certificate cannot be parsed") from None
    signer = identity_from_certificate(cert)
    if signer.uri != statement.sender:
        raise Unauthenticated(f"{where}: the verifying certificate belongs to {signer}, not the sender")
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise Unauthenticated(f"{where}: the sender certificate does not hold an EC P-256 key")
    try:
        public_key.verify(signature, statement.canonical_bytes(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise Unauthenticated(
            f"{where} does not verify: wrong round, sender or content, or another key signed it"
        ) from None
    return VerifiedSignature(statement, bytes(signature), bytes(certificate_pem))


def peer_certificate_pem(context: grpc.ServicerContext) -> bytes:
    """The verified mTLS client certificate of this call, as PEM."""
    pems = context.auth_context().get(PEER_CERT_KEY, [])
    if len(pems) != 1:
        raise Unauthenticated("the call carries no client certificate")
    return bytes(pems[0])


class ChunkDigest:
    """SHA-256 over a stream of TensorChunks, fed one chunk at a time as they arrive.

    Each chunk contributes every field of the TensorChunk schema, in field-number order, in a
    fixed-width, length-prefixed encoding (not its protobuf serialization, which is not
    canonical). Fields added to the schema later are covered without a change here, so no
    part of a chunk can be altered under a valid signature; equal chunk streams give equal
    digests on every platform, and no two different streams collide by re-framing.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256(_CHUNK_CONTEXT)
        self.chunks = 0

    def update(self, chunk: tensors_pb2.TensorChunk) -> None:
        update = self._hash.update
        try:
            for number, name, code, repeated in _CHUNK_FIELDS:
                value = getattr(chunk, name)  # read once: protobuf copies bytes on every access
                update(struct.pack(">I", number))
                if repeated:
                    update(struct.pack(f">I{len(value)}{code}", len(value), *value))
                elif code == "bytes":
                    data = value.encode() if isinstance(value, str) else value
                    update(struct.pack(">Q", len(data)))
                    update(data)
                else:
                    update(struct.pack(f">{code}", value))
        except (struct.error, OverflowError):
            raise InvalidInput(f"chunk {self.chunks + 1} has a field outside its wire range") from None
        self.chunks += 1

    def digest(self) -> bytes:
        return self._hash.digest()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _field_plan(descriptor: Descriptor) -> tuple[tuple[int, str, str, bool], ...]:
    """(number, name, struct code or "bytes", repeated) of every field, by field number."""
    plan = []
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        code = _STRUCT_CODES.get(field.type)
        if code is None:
            raise TypeError(f"{descriptor.full_name}.{field.name}: no canonical encoding for its type")
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if repeated and code == "bytes":
            raise TypeError(f"{descriptor.full_name}.{field.name}: no canonical encoding for repeated bytes")
        plan.append((field.number, field.name, code, repeated))
    return tuple(plan)


_STRUCT_CODES = {
    FieldDescriptor.TYPE_STRING: "bytes",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "?",
    FieldDescriptor.TYPE_ENUM: "i",
    FieldDescriptor.TYPE_INT32: "i",
    FieldDescriptor.TYPE_SINT32: "i",
    FieldDescriptor.TYPE_SFIXED32: "i",
    FieldDescriptor.TYPE_UINT32: "I",
    FieldDescriptor.TYPE_FIXED32: "I",
    FieldDescriptor.TYPE_INT64: "q",
    FieldDescriptor.TYPE_SINT64: "q",
    FieldDescriptor.TYPE_SFIXED64: "q",
    FieldDescriptor.TYPE_UINT64: "Q",
    FieldDescriptor.TYPE_FIXED64: "Q",
    FieldDescriptor.TYPE_FLOAT: "f",
    FieldDescriptor.TYPE_DOUBLE: "d",
}
# Built at import: a TensorChunk field without a canonical encoding fails loudly, not silently.
_CHUNK_FIELDS = _field_plan(tensors_pb2.TensorChunk.DESCRIPTOR)


def digest_chunks(chunks: Iterable[tensors_pb2.TensorChunk]) -> bytes:
    """The content digest of a whole chunk stream (what a sender signs)."""
    digest = ChunkDigest()
    for chunk in chunks:
        digest.update(chunk)
    return digest.digest()


def verified_chunks(
    chunks: Iterable[tensors_pb2.TensorChunk],
    *,
    round_number: int,
    sender: str,
    certificate_pem: bytes,
    signature: Callable[[], bytes],
    on_verified: Callable[[VerifiedSignature], None] | None = None,
) -> Iterator[tensors_pb2.TensorChunk]:
    """Yield `chunks` unchanged while hashing them; after the last, verify the signature.

    `signature` is asked for once the stream is exhausted, so it may come from a header read
    earlier or from a trailer that follows the chunks. A bad or missing signature raises
    `Unauthenticated` from the final `next()`, before the consumer can act on the stream as
    complete; `on_verified` receives the evidence of a good one.
    """
    digest = ChunkDigest()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    statement = SignedStatement(round_number, sender, digest.digest())
    verified = verify_signature(statement, signature(), certificate_pem)
    if on_verified is not None:
        on_verified(verified)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class StreamSignature:
    """One upload's signature, checked as its chunks stream through `wrap`; the evidence after.

    `verified` is the (statement, signature, certificate) to record once the stream has been
    consumed and verified; None before that, or when the stream was never read (a duplicate).
    """

    def __init__(self, round_number: int, sender: Identity, certificate_pem: bytes, signature: bytes) -> None:
        self._round = round_number
        self._sender = sender
        self._certificate_pem = certificate_pem
        self._signature = signature
        self.verified: VerifiedSignature | None = None

    def wrap(self, chunks: Iterable[tensors_pb2.TensorChunk]) -> Iterator[tensors_pb2.TensorChunk]:
        return verified_chunks(
            chunks,
            round_number=self._round,
            sender=self._sender.uri,
            certificate_pem=self._certificate_pem,
            signature=lambda: self._signature,
            on_verified=self._keep,
        )

    def _keep(self, verified: VerifiedSignature) -> None:
        self.verified = verified

    def evidence(self) -> tuple[dict[str, str], dict[str, str]]:
        """Audit digests and details: the content digest and the signature, when verified."""
        if self.verified is None:
            return {}, {}
        return (
            {"content": self.verified.statement.content_sha256.hex()},
            {"content_signature": self.verified.signature.hex()},
        )
