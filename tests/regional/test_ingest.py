"""The regional's silo service over real mTLS gRPC: bad input is refused with a clear status,
nothing of it reaches the aggregate, and the round goes on with the honest silos."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from jurisfed.audit.events import Decision, EventKind
from jurisfed.audit.sink import MemoryAuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import issue
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.policy.guard import PolicyGuard
from jurisfed.rounds import TrainingConfig
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import serve
from jurisfed.tensors import ModelSpec, TensorSpec, Weights
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.v1 import regional_pb2, regional_pb2_grpc, rounds_pb2, tensors_pb2
from regional.aggregator import RegionalAggregator
from regional.local_round import RoundTerms
from regional.servicer import regional_service

SPEC = ModelSpec("test", (TensorSpec("dense/kernel", (300, 7)), TensorSpec("dense/bias", (7,))))
ROUND = 1
# Each silo stub's signer: the key of the certificate the stub connects with.
SIGNERS: weakref.WeakKeyDictionary[regional_pb2_grpc.RegionalAggregatorStub, ContentSigner] = (
    weakref.WeakKeyDictionary()
)
DEADLINE_S = 30.0
# A contract whose terms are the defaults: every registered silo may take part.
TERMS = RoundTerms(contract_sha256="c0" * 32)


class Federation:
    """One EU regional served over mTLS, and stubs for silos with certificates from the same CA."""

    def __init__(
        self, pki: Path, tmp: Path, aggregator: RegionalAggregator, address: str, audit: MemoryAuditSink
    ) -> None:
        self._pki, self._tmp, self.aggregator, self.address = pki, tmp, aggregator, address
        self.audit = audit
        self._channels: list[grpc.Channel] = []

    def stub(self, identity: Identity) -> regional_pb2_grpc.RegionalAggregatorStub:
        files = issue(
            self._pki, identity, self._tmp / f"{identity.jurisdiction}-{identity.tier.value}-{identity.node}"
        )
        channel = open_channel(self.address, files)
        self._channels.append(channel)
        stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
        SIGNERS[stub] = ContentSigner.from_tls_files(files)
        return stub

    def silo(self, node: str, examples: int = 100) -> regional_pb2_grpc.RegionalAggregatorStub:
        stub = self.stub(Identity("EU", Tier.SILO, node))
        stub.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=examples), timeout=10)
        return stub

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@pytest.fixture
def federation(
    pki: Path, tmp_path: Path, example_guard: Callable[[str, Identity, MemoryAuditSink], PolicyGuard]
) -> Iterator[Federation]:
    identity = Identity("EU", Tier.REGIONAL, "regional-eu")
    tls = issue(pki, identity, tmp_path / "regional")
    audit = MemoryAuditSink()
    aggregator = RegionalAggregator(
        identity,
        tmp_path / "state",
        min_silos=2,
        max_concurrent_uploads=4,
        audit=audit,
        guard=example_guard("EU", identity, audit),
    )
    with serve([regional_service(aggregator)], tls) as server:
        server.set_serving(True)
        running = Federation(pki, tmp_path, aggregator, server.address, audit)
        yield running
        running.close()


def open_round(aggregator: RegionalAggregator, base: Weights) -> None:
    aggregator.open_round(
        ROUND, SPEC, TrainingConfig(epochs=1, batch_size=8, learning_rate=0.1), base, DEADLINE_S, terms=TERMS
    )


def delta(value: float) -> Weights:
    return {t.name: np.full(t.shape, value, dtype=np.float32) for t in SPEC.tensors}


def update(
    value: float, *, round_number: int = ROUND, examples: int = 100, key: str | None = None
) -> list[regional_pb2.UpdateMessage]:
    header = regional_pb2.UpdateHeader(
        round=round_number, example_count=examples, idempotency_key=key or f"key-{value}", train_loss=0.5
    )
    messages = [regional_pb2.UpdateMessage(header=header)]
    messages += [regional_pb2.UpdateMessage(chunk=c) for c in encode_tensors(SPEC, delta(value))]
    return messages


def submit(
    stub: regional_pb2_grpc.RegionalAggregatorStub,
    messages: list[regional_pb2.UpdateMessage],
    *,
    signer: ContentSigner | None = None,
) -> regional_pb2.SubmitUpdateResponse:
    """Send `messages` as the silo behind `stub` does: signed with its certificate key over
    exactly the chunks sent (or by `signer`, to impersonate)."""
    header = messages[0].header
    digest = digest_chunks(m.chunk for m in messages[1:])
    header.content_signature = (signer or SIGNERS[stub]).sign(header.round, digest)
    return stub.SubmitUpdate(iter(messages), timeout=10)


def submit_unsigned(
    stub: regional_pb2_grpc.RegionalAggregatorStub, messages: list[regional_pb2.UpdateMessage]
) -> regional_pb2.SubmitUpdateResponse:
    return stub.SubmitUpdate(iter(messages), timeout=10)


def corrupt(messages: list[regional_pb2.UpdateMessage], how: str) -> list[regional_pb2.UpdateMessage]:
    """The same update with its first chunk damaged in one way."""
    chunk = messages[1].chunk
    if how == "dtype":
        chunk.dtype = tensors_pb2.DTYPE_UNSPECIFIED
    elif how == "shape":
        del chunk.shape[:]
        chunk.shape.extend([7, 300])
    elif how == "offset":
        chunk.offset = 3
    elif how == "nan":
        values = np.frombuffer(chunk.data, dtype="<f4").copy()
        values[5] = np.nan
        chunk.data = values.tobytes()
    elif how == "inf":
        values = np.frombuffer(chunk.data, dtype="<f4").copy()
        values[0] = np.inf
        chunk.data = values.tobytes()
    return messages


def close_round(aggregator: RegionalAggregator) -> Weights | None:
    """Close the open round now, whoever has contributed."""
    return aggregator.close_now().mean_delta


@pytest.mark.parametrize(
    ("how", "code", "words"),
    [
        ("dtype", grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        ("shape", grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        ("offset", grpc.StatusCode.INVALID_ARGUMENT, "offset"),
        ("nan", grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        ("inf", grpc.StatusCode.INVALID_ARGUMENT, "finite"),
    ],
)
def test_a_malformed_update_is_refused_and_the_round_goes_on(
    federation: Federation, how: str, code: grpc.StatusCode, words: str
) -> None:
    honest_a, honest_b = federation.silo("silo-a"), federation.silo("silo-b", examples=300)
    bad = federation.silo("silo-c")
    open_round(federation.aggregator, delta(0.0))

    with pytest.raises(grpc.RpcError) as refused:
        submit(bad, corrupt(update(9.0), how))
    assert refused.value.code() == code
    assert words in refused.value.details().lower()
    assert "Traceback" not in refused.value.details()

    assert submit(honest_a, update(1.0)).accepted
    assert submit(honest_b, update(3.0, examples=300)).accepted
    mean = close_round(federation.aggregator)
    assert mean is not None
    np.testing.assert_allclose(mean["dense/kernel"], 2.5)  # (1*100 + 3*300) / 400; the bad 9.0 is absent
    [summary] = federation.aggregator.history()
    assert summary.participants == ("silo-a", "silo-b")
    assert [r.sender for r in summary.rejections] == ["silo-c"]
    updates = [r.event for r in federation.audit.records if r.event.kind is EventKind.UPDATE_RECEIVED]
    assert [(e.subject.node if e.subject else None, e.decision) for e in updates] == [
        ("silo-c", Decision.DENY),
        ("silo-a", Decision.ALLOW),
        ("silo-b", Decision.ALLOW),
    ]
    assert updates[0].details["reason"] == "InvalidInput (INVALID_ARGUMENT)"


def test_an_update_for_another_round_fails_its_precondition(federation: Federation) -> None:
    silo = federation.silo("silo-a")
    open_round(federation.aggregator, delta(0.0))
    with pytest.raises(grpc.RpcError) as refused:
        submit(silo, update(1.0, round_number=ROUND + 1))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "round 2 is not open; the open round is 1" in refused.value.details()


def test_an_oversized_message_is_refused_by_size(federation: Federation) -> None:
    silo = federation.silo("silo-a")
    open_round(federation.aggregator, delta(0.0))
    messages = update(1.0)
    messages[1].chunk.data = bytes(3 * 1024 * 1024)  # over the 2 MiB message limit
    with pytest.raises(grpc.RpcError) as refused:
        submit(silo, messages)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_resubmitted_update_counts_once(federation: Federation) -> None:
    silo_a, silo_b = federation.silo("silo-a"), federation.silo("silo-b")
    open_round(federation.aggregator, delta(0.0))
    assert not submit(silo_a, update(1.0, key="same")).duplicate
    assert submit(silo_a, update(1.0, key="same")).duplicate
    submit(silo_b, update(3.0))
    mean = close_round(federation.aggregator)
    assert mean is not None
    np.testing.assert_allclose(mean["dense/bias"], 2.0)


def test_unsigned_and_mis_signed_updates_are_refused_and_count_for_nothing(
    federation: Federation,
) -> None:
    silo_a, silo_b = federation.silo("hospital-a"), federation.silo("hospital-b")
    open_round(federation.aggregator, delta(0.0))
    with pytest.raises(grpc.RpcError) as unsigned:
        submit_unsigned(silo_a, update(9.0))
    assert unsigned.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "is missing: unsigned content is refused" in unsigned.value.details()
    # hospital-b's key signing what hospital-a sends: the statement names the wrong sender.
    with pytest.raises(grpc.RpcError) as impersonated:
        submit(silo_a, update(9.0), signer=SIGNERS[silo_b])
    assert impersonated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "does not verify" in impersonated.value.details()
    # A signature over other content (the value was changed after signing).
    messages = update(9.0)
    header = messages[0].header
    header.content_signature = SIGNERS[silo_a].sign(ROUND, digest_chunks(m.chunk for m in update(1.0)[1:]))
    with pytest.raises(grpc.RpcError) as altered:
        silo_a.SubmitUpdate(iter(messages), timeout=10)
    assert altered.value.code() == grpc.StatusCode.UNAUTHENTICATED

    assert submit(silo_a, update(1.0)).accepted
    assert submit(silo_b, update(3.0)).accepted
    mean = close_round(federation.aggregator)
    assert mean is not None
    np.testing.assert_allclose(mean["dense/kernel"], 2.0, rtol=1e-6)  # 9.0 never counted
    received = [e for e in federation.audit.events() if e.kind is EventKind.UPDATE_RECEIVED]
    accepted = [e for e in received if e.decision is Decision.ALLOW]
    assert len(accepted) == 2
    for event in accepted:  # the evidence: content digest and the signature that verified it
        assert len(event.digests["content"]) == 64
        assert len(event.details["content_signature"]) > 100
    assert sum(e.decision is Decision.DENY for e in received) == 3


def test_an_update_claiming_more_examples_than_registered_is_refused(federation: Federation) -> None:
    silo = federation.silo("silo-a", examples=50)
    open_round(federation.aggregator, delta(0.0))
    with pytest.raises(grpc.RpcError) as refused:
        submit(silo, update(1.0, examples=5000))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5000 examples" in refused.value.details()


def test_a_silo_of_another_jurisdiction_is_refused(federation: Federation) -> None:
    foreign = federation.stub(Identity("US", Tier.SILO, "hospital-us"))
    with pytest.raises(grpc.RpcError) as refused:
        foreign.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=10), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "this regional serves only EU" in refused.value.details()


def test_an_unregistered_silo_cannot_submit(federation: Federation) -> None:
    stranger = federation.stub(Identity("EU", Tier.SILO, "stranger"))
    open_round(federation.aggregator, delta(0.0))
    with pytest.raises(grpc.RpcError) as refused:
        submit(stranger, update(1.0))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must register" in refused.value.details()


def test_the_round_aborts_below_quorum_and_keeps_no_personalized_model(federation: Federation) -> None:
    silo = federation.silo("silo-a")
    federation.silo("silo-b")
    federation.aggregator.open_round(ROUND, SPEC, TrainingConfig(), delta(0.0), 1.0, terms=TERMS)
    submit(silo, update(1.0))
    assert close_round(federation.aggregator) is None
    [summary] = federation.aggregator.history()
    assert summary.outcome.startswith("aborted: quorum not met (1 of 2 silos)")
    [gate] = [r.event for r in federation.audit.records if r.event.kind is EventKind.GATE]
    assert (gate.decision, gate.details["value"], gate.details["threshold"]) == (Decision.FAIL, 1, 2)


def test_a_committed_round_serves_the_personalized_model_to_its_silos(federation: Federation) -> None:
    silo_a, silo_b = federation.silo("silo-a"), federation.silo("silo-b")
    open_round(federation.aggregator, delta(1.0))
    submit(silo_a, update(0.5))
    submit(silo_b, update(0.5))
    close_round(federation.aggregator)
    chunks = list(silo_a.FetchPersonalizedModel(rounds_pb2.FetchModelRequest(round=ROUND), timeout=10))
    values = np.frombuffer(b"".join(c.data for c in chunks if c.name == "dense/bias"), dtype="<f4")
    np.testing.assert_allclose(values, 1.5)


def test_status_needs_the_operator_role(federation: Federation) -> None:
    silo = federation.silo("silo-a")
    with pytest.raises(grpc.RpcError) as refused:
        silo.GetStatus(regional_pb2.GetRegionalStatusRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    operator = federation.stub(Identity("EU", Tier.OPERATOR, "it-team"))
    status = operator.GetStatus(regional_pb2.GetRegionalStatusRequest(), timeout=10)
    assert list(status.registered_silos) == ["silo-a"]
