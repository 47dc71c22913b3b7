"""Signed content: a good signature verifies; wrong round, sender, content, key or bytes never do."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jurisfed.aggregation.intake import RoundIntake
from jurisfed.auth.identity import Identity, Tier, peer_identity
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.auth.signatures import (
    ChunkDigest,
    ContentSigner,
    SignedStatement,
    VerifiedSignature,
    digest_chunks,
    peer_certificate_pem,
    verified_chunks,
    verify_signature,
)
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.errors import ConfigError, InvalidInput, Unauthenticated
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import Service, serve
from jurisfed.tensors import ModelSpec, TensorSpec, Weights
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.v1 import tensors_pb2

TIMEOUT_S = 5.0
ROUND = 7
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
SILO = Identity("EU", Tier.SILO, "hospital-a")
OTHER_SILO = Identity("EU", Tier.SILO, "hospital-b")
SPEC = ModelSpec("probe", (TensorSpec("w", (300, 7)), TensorSpec("b", (7,))))
RAW = Codec(CodecKind.RAW)


@pytest.fixture(scope="module")
def tls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Identity, TlsFiles]:
    return {
        identity: issue(pki, identity, tmp_path_factory.mktemp(identity.node))
        for identity in (REGIONAL, SILO, OTHER_SILO)
    }


@pytest.fixture(scope="module")
def signer(tls: dict[Identity, TlsFiles]) -> ContentSigner:
    return ContentSigner.from_tls_files(tls[SILO])


@pytest.fixture(scope="module")
def other_signer(tls: dict[Identity, TlsFiles]) -> ContentSigner:
    return ContentSigner.from_tls_files(tls[OTHER_SILO])


def cert(tls: dict[Identity, TlsFiles], identity: Identity) -> bytes:
    return tls[identity].cert.read_bytes()


def weights(seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}


def chunks(seed: int = 0) -> list[tensors_pb2.TensorChunk]:
    """Several chunks per tensor, so chunk boundaries matter."""
    return list(encode_tensors(SPEC, weights(seed), max_chunk_bytes=4096))


# --- sign and verify ------------------------------------------------------------------------------


def test_a_good_signature_verifies_and_is_evidence(
    signer: ContentSigner, tls: dict[Identity, TlsFiles]
) -> None:
    digest = digest_chunks(chunks())
    signature = signer.sign(ROUND, digest)
    statement = SignedStatement(ROUND, SILO.uri, digest)
    evidence = verify_signature(statement, signature, cert(tls, SILO))
    assert evidence == VerifiedSignature(statement, signature, cert(tls, SILO))
    # Anyone holding the record can check it again later.
    verify_signature(evidence.statement, evidence.signature, evidence.certificate_pem)


def test_the_signer_is_the_identity_of_its_certificate(signer: ContentSigner) -> None:
    assert signer.identity == SILO


@pytest.mark.parametrize(
    "case",
    [
        "wrong round",
        "wrong sender",
        "another sender with its own certificate",
        "altered digest",
        "altered chunk",
        "another node's key",
        "garbage",
        "truncated",
        "empty",
        "too long",
    ],
)
def test_a_bad_signature_is_refused(
    case: str, signer: ContentSigner, other_signer: ContentSigner, tls: dict[Identity, TlsFiles]
) -> None:
    digest = digest_chunks(chunks())
    signature = signer.sign(ROUND, digest)
    statement, certificate, expected = (
        SignedStatement(ROUND, SILO.uri, digest),
        cert(tls, SILO),
        "does not verify",
    )
    if case == "wrong round":
        statement = SignedStatement(ROUND + 1, SILO.uri, digest)
    elif case == "wrong sender":
        statement, expected = SignedStatement(ROUND, OTHER_SILO.uri, digest), f"belongs to {SILO}"
    elif case == "another sender with its own certificate":
        statement, certificate = SignedStatement(ROUND, OTHER_SILO.uri, digest), cert(tls, OTHER_SILO)
    elif case == "altered digest":
        statement = SignedStatement(ROUND, SILO.uri, bytes([digest[0] ^ 1]) + digest[1:])
    elif case == "altered chunk":
        altered = chunks()
        altered[3].data = bytes([altered[3].data[0] ^ 1]) + altered[3].data[1:]
        statement = SignedStatement(ROUND, SILO.uri, digest_chunks(altered))
    elif case == "another node's key":
        signature = other_signer.sign(ROUND, digest)
    elif case == "garbage":
        signature = b"\x30\x44" + bytes(range(68))
    elif case == "truncated":
        signature = signature[:-1]
    elif case == "empty":
        signature, expected = b"", "missing: unsigned content is refused"
    elif case == "too long":
        signature, expected = signature + bytes(16), "at most 72"
    with pytest.raises(Unauthenticated) as caught:
        verify_signature(statement, signature, certificate)
    assert expected in str(caught.value)
    assert f"round {statement.round}" in str(caught.value)


def test_a_certificate_that_cannot_be_parsed_is_refused(signer: ContentSigner) -> None:
    digest = digest_chunks(chunks())
    with pytest.raises(Unauthenticated, match="cannot be parsed"):
        verify_signature(SignedStatement(ROUND, SILO.uri, digest), signer.sign(ROUND, digest), b"not a cert")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(signature=st.binary(max_size=100))
def test_arbitrary_bytes_never_verify(signature: bytes, tls: dict[Identity, TlsFiles]) -> None:
    statement = SignedStatement(ROUND, SILO.uri, hashlib.sha256(b"content").digest())
    with pytest.raises(Unauthenticated):
        verify_signature(statement, signature, cert(tls, SILO))


def test_a_signer_refuses_a_key_that_is_not_its_certificates(
    tls: dict[Identity, TlsFiles], tmp_path: Path
) -> None:
    mixed = TlsFiles(ca_cert=tls[SILO].ca_cert, cert=tls[SILO].cert, key=tls[OTHER_SILO].key)
    with pytest.raises(ConfigError, match="does not belong to"):
        ContentSigner.from_tls_files(mixed)


# --- what is signed -------------------------------------------------------------------------------


def test_the_signed_bytes_are_a_fixed_layout() -> None:
    statement = SignedStatement(258, "jurisfed://EU/silo/a", bytes(range(32)))
    assert statement.canonical_bytes() == (
        b"jurisfed/signed-content/v1\x00"
        + (258).to_bytes(8, "big")
        + len(b"jurisfed://EU/silo/a").to_bytes(2, "big")
        + b"jurisfed://EU/silo/a"
        + bytes(range(32))
    )


@pytest.mark.parametrize(
    ("round_number", "digest", "reason"),
    [(-1, bytes(32), "round -1"), (2**63, bytes(32), "round"), (1, bytes(31), "32 bytes")],
)
def test_a_statement_out_of_range_is_invalid(round_number: int, digest: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        SignedStatement(round_number, SILO.uri, digest)


def test_the_digest_is_the_same_streamed_chunk_by_chunk() -> None:
    digest = ChunkDigest()
    for chunk in chunks():
        digest.update(chunk)
    assert digest.digest() == digest_chunks(chunks())
    assert digest.hexdigest() == digest_chunks(chunks()).hex()
    assert digest.chunks == len(chunks())


def test_the_digest_depends_on_content_and_on_chunking() -> None:
    assert digest_chunks(chunks(0)) != digest_chunks(chunks(1))
    rechunked = encode_tensors(SPEC, weights(0), max_chunk_bytes=8192)
    assert digest_chunks(rechunked) != digest_chunks(chunks(0))


@pytest.mark.parametrize(
    "field", list(tensors_pb2.TensorChunk.DESCRIPTOR.fields), ids=lambda field: field.name
)
def test_every_field_of_a_chunk_is_covered_by_the_digest(field: FieldDescriptor) -> None:
    """Fields added to TensorChunk later are covered too: the digest walks the schema."""
    original = chunks()[0]
    changed = tensors_pb2.TensorChunk()
    changed.CopyFrom(original)
    value = getattr(original, field.name)
    if field.label == FieldDescriptor.LABEL_REPEATED:
        getattr(changed, field.name).append(5)
    elif isinstance(value, (str, bytes)):
        setattr(changed, field.name, value + ("z" if isinstance(value, str) else b"z"))
    else:
        setattr(changed, field.name, value + 1)
    assert digest_chunks([changed]) != digest_chunks([original])


def test_int8_chunks_are_digested_with_their_scale() -> None:
    int8 = list(
        encode_tensors(SPEC, weights(), encoding=tensors_pb2.ENCODING_INT8, rng=np.random.default_rng(1))
    )
    rescaled = [tensors_pb2.TensorChunk() for _ in int8]
    for copy, chunk in zip(rescaled, int8, strict=True):
        copy.CopyFrom(chunk)
    rescaled[0].scale *= 2
    assert digest_chunks(int8) != digest_chunks(rescaled)


# --- verifying while streaming into an intake -----------------------------------------------------


def _intake() -> RoundIntake:
    return RoundIntake(ROUND, SPEC, codec=RAW, max_concurrent=2)


def test_a_signed_update_is_folded_once_its_signature_verifies(
    signer: ContentSigner, tls: dict[Identity, TlsFiles]
) -> None:
    stream = chunks()
    signature = signer.sign(ROUND, digest_chunks(stream))
    intake, evidence = _intake(), []
    receipt = intake.receive(
        SILO.uri,
        "key-1",
        10.0,
        verified_chunks(
            stream,
            round_number=ROUND,
            sender=SILO.uri,
            certificate_pem=cert(tls, SILO),
            signature=lambda: signature,
            on_verified=evidence.append,
        ),
    )
    assert receipt.accepted
    assert intake.contributors == (SILO.uri,)
    assert [record.statement.sender for record in evidence] == [SILO.uri]


@pytest.mark.parametrize(
    "fault", ["unsigned", "signed by another silo", "altered after signing", "other round"]
)
def test_a_mis_signed_update_is_refused_and_never_folded(
    fault: str, signer: ContentSigner, other_signer: ContentSigner, tls: dict[Identity, TlsFiles]
) -> None:
    stream = chunks()
    signature = signer.sign(ROUND, digest_chunks(stream))
    if fault == "unsigned":
        signature = b""
    elif fault == "signed by another silo":
        signature = other_signer.sign(ROUND, digest_chunks(stream))
    elif fault == "altered after signing":
        stream[-1].data = bytes(len(stream[-1].data))
    elif fault == "other round":
        signature = signer.sign(ROUND - 1, digest_chunks(stream))
    intake = _intake()
    checked = verified_chunks(
        stream,
        round_number=ROUND,
        sender=SILO.uri,
        certificate_pem=cert(tls, SILO),
        signature=lambda: signature,
    )
    with pytest.raises(Unauthenticated):
        intake.receive(SILO.uri, "key-1", 10.0, checked)
    assert intake.contributors == ()
    assert intake.close() is None  # nothing was aggregated
    assert [r.code for r in intake.rejections] == ["UNAUTHENTICATED"]


def test_the_signature_is_asked_for_only_after_the_last_chunk(
    signer: ContentSigner, tls: dict[Identity, TlsFiles]
) -> None:
    """So it may travel as a trailer after the chunks, which lets the sender stream too."""
    stream, seen = chunks(), []
    digest = ChunkDigest()

    def trailer() -> bytes:
        assert len(seen) == len(stream)
        return signer.sign(ROUND, digest.digest())

    for chunk in verified_chunks(
        stream, round_number=ROUND, sender=SILO.uri, certificate_pem=cert(tls, SILO), signature=trailer
    ):
        digest.update(chunk)  # the sender's side, computed as it sends
        seen.append(chunk)
    assert len(seen) == len(stream)


# --- over a real mTLS connection ------------------------------------------------------------------

UPLOAD = "jurisfed.test.Uploads"
SIGNATURE_KEY = "jurisfed-signature-bin"


class Uploads:
    """A stream of chunks whose signature travels in metadata; verified against the peer certificate."""

    def __init__(self) -> None:
        self.intake = _intake()

    def submit(self, chunks: Iterator[tensors_pb2.TensorChunk], context: grpc.ServicerContext) -> bytes:
        sender = peer_identity(context).uri
        metadata = dict(context.invocation_metadata())
        checked = verified_chunks(
            chunks,
            round_number=ROUND,
            sender=sender,
            certificate_pem=peer_certificate_pem(context),
            signature=lambda: bytes(metadata.get(SIGNATURE_KEY, b"")),
        )
        self.intake.receive(sender, "key", 1.0, checked)
        return b"accepted"

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            UPLOAD,
            {
                "Submit": grpc.stream_unary_rpc_method_handler(
                    self.submit, request_deserializer=tensors_pb2.TensorChunk.FromString
                )
            },
        )
        return Service(name=UPLOAD, register=lambda server: server.add_generic_rpc_handlers((handler,)))


def test_uploads_verify_against_the_peer_certificate_over_mtls(
    signer: ContentSigner, other_signer: ContentSigner, tls: dict[Identity, TlsFiles]
) -> None:
    uploads = Uploads()
    stream = chunks()
    good = signer.sign(ROUND, digest_chunks(stream))
    with serve([uploads.service()], tls[REGIONAL]) as server:
        with open_channel(server.address, tls[OTHER_SILO]) as channel:
            submit = channel.stream_unary(
                f"/{UPLOAD}/Submit", request_serializer=tensors_pb2.TensorChunk.SerializeToString
            )
            # hospital-b replays hospital-a's signed update as its own, then sends it unsigned.
            for signature in (good, b""):
                with pytest.raises(grpc.RpcError) as caught:
                    submit(iter(stream), metadata=((SIGNATURE_KEY, signature),), timeout=TIMEOUT_S)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "content signature of jurisfed://EU/silo/hospital-b for round 7" in caught.value.details()
        with open_channel(server.address, tls[SILO]) as channel:
            submit = channel.stream_unary(
                f"/{UPLOAD}/Submit", request_serializer=tensors_pb2.TensorChunk.SerializeToString
            )
            forged = other_signer.sign(ROUND, digest_chunks(stream))
            with pytest.raises(grpc.RpcError) as caught:
                submit(iter(stream), metadata=((SIGNATURE_KEY, forged),), timeout=TIMEOUT_S)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert submit(iter(stream), metadata=((SIGNATURE_KEY, good),), timeout=TIMEOUT_S) == b"accepted"
    assert uploads.intake.contributors == (SILO.uri,)
