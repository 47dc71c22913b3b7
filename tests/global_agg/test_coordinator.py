"""The global aggregator over real mTLS gRPC: regionals of different jurisdictions register,
follow numbered rounds, send int8 aggregates, and the committed model is the example-weighted
mean of what they sent, written as a checkpoint whose hash the next round announces."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from global_agg.acceptance import Acceptance
from global_agg.coordinator import BLOB_DIR, STATE_FILE, GlobalCoordinator, Schedule
from global_agg.plans import ContractIssuer, plan_from_settings
from global_agg.servicer import global_service
from jurisfed.audit.sink import MemoryAuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import issue
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.loader import read_policy
from jurisfed.rounds import TrainingConfig
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import serve
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import TierState
from jurisfed.tensors import ModelSpec, TensorSpec, Weights, weights_sha256
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, rounds_pb2, tensors_pb2

EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
SPEC = ModelSpec("test-mlp", (TensorSpec("dense/kernel", (64, 16)), TensorSpec("dense/bias", (16,))))
_RNG = np.random.default_rng(0)
INITIAL: Weights = {t.name: _RNG.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}
INITIAL_SHA256 = weights_sha256(SPEC, INITIAL)
TRAINING = TrainingConfig(epochs=1, batch_size=4, learning_rate=0.05, proximal_mu=0.0)
# The settings of the plan and schedule each test's global runs, which tests change.
SETTINGS = {
    "rounds": 1,
    "round_deadline_s": 30.0,  # tests that need the deadline to pass shorten it
    "expected_jurisdictions": 1,
    "start_timeout_s": 5.0,
    "min_jurisdictions": 1,
}
CALL_TIMEOUT_S = 10.0
MEMBERS = ("EU", "IN", "US")
# What each example policy's regional attests it enforced (the sha256 of the policy's canonical form).
ATTESTATIONS = {j: read_policy(EXAMPLE_POLICIES / f"{j.lower()}.yaml").sha256 for j in MEMBERS}

Stub = global_pb2_grpc.GlobalAggregatorStub
# Each regional stub's signer: the key of the certificate the stub connects with.
SIGNERS: weakref.WeakKeyDictionary[Stub, ContentSigner] = weakref.WeakKeyDictionary()


class Checkpoints:
    """The global's committed checkpoints, read from its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self._state = TierState(state_dir / STATE_FILE)
        self._blobs = BlobStore(state_dir / BLOB_DIR)

    def versions(self) -> list[int]:
        return [c.version for c in self._state.checkpoints()]

    def sha256(self, version: int) -> str:
        return self._state.checkpoint(version).blob_sha256

    def load(self, version: int) -> Weights:
        return self._blobs.get_weights(self.sha256(version), SPEC)


class Federation:
    """A global aggregator served over mTLS, its round loop and its checkpoints."""

    def __init__(self, pki: Path, tmp: Path, coordinator: GlobalCoordinator, state_dir: Path) -> None:
        self._pki, self._tmp = pki, tmp
        self.coordinator, self.store = coordinator, Checkpoints(state_dir)
        self.address = ""
        self.stop = threading.Event()
        self._rounds: threading.Thread | None = None
        self._channels: list[grpc.Channel] = []

    def start_rounds(self) -> None:
        self._rounds = threading.Thread(target=self.coordinator.run, args=(self.stop,), daemon=True)
        self._rounds.start()

    def stub(self, identity: Identity) -> Stub:
        directory = self._tmp / "peers" / f"{identity.jurisdiction}-{identity.tier.value}-{identity.node}"
        files = issue(self._pki, identity, directory)
        channel = open_channel(self.address, files)
        self._channels.append(channel)
        stub = Stub(channel)
        SIGNERS[stub] = ContentSigner.from_tls_files(files)
        return stub

    def regional(self, jurisdiction: str, node: str | None = None) -> Stub:
        """A regional of `jurisdiction`, registered."""
        stub = self.stub(Identity(jurisdiction, Tier.REGIONAL, node or f"regional-{jurisdiction.lower()}"))
        response = stub.RegisterRegional(
            global_pb2.RegisterRegionalRequest(code_version="test"), timeout=CALL_TIMEOUT_S
        )
        assert response.jurisdiction == jurisdiction
        return stub

    def status(self) -> global_pb2.GlobalStatus:
        operator = self.stub(Identity("EU", Tier.OPERATOR, "ops"))
        return operator.GetStatus(global_pb2.GetGlobalStatusRequest(), timeout=CALL_TIMEOUT_S)

    def close(self) -> None:
        self.stop.set()
        if self._rounds is not None:
            self._rounds.join(timeout=10)
            assert not self._rounds.is_alive(), "the round loop did not stop"
        for channel in self._channels:
            channel.close()


StartGlobal = Callable[..., Federation]


@pytest.fixture
def start_global(
    pki: Path, tmp_path: Path, example_guard: Callable[[str, Identity, MemoryAuditSink], PolicyGuard]
) -> Iterator[StartGlobal]:
    """Serve a global aggregator running the plan SETTINGS with the given changes describe,
    under the example policies (global hosted in ch-zurich; members EU, IN, US)."""
    with ExitStack() as stack:

        def start(state_dir: Path | None = None, **changes: Any) -> Federation:
            identity = Identity("GLOBAL", Tier.GLOBAL, "global")
            tls = issue(pki, identity, tmp_path / "global-tls")
            state_dir = state_dir or tmp_path / "state"
            settings = {**SETTINGS, **changes}
            audit = MemoryAuditSink()
            coordinator = GlobalCoordinator(
                identity,
                SPEC,
                INITIAL,
                state_dir,
                Schedule(settings["expected_jurisdictions"], settings["start_timeout_s"]),
                issuer=ContractIssuer.open(state_dir, None),
                acceptance=Acceptance(None, None),
                audit=audit,
                guard=example_guard("GLOBAL", identity, audit),
                members={j: example_guard(j, identity, audit) for j in MEMBERS},
                initial_plan=plan_from_settings(
                    rounds=settings["rounds"],
                    round_deadline_s=settings["round_deadline_s"],
                    min_jurisdictions=settings["min_jurisdictions"],
                    training=TRAINING,
                    compression="int8",
                    jurisdictions=MEMBERS,
                ),
            )
            federation = Federation(pki, tmp_path, coordinator, state_dir)
            server = stack.enter_context(serve([global_service(coordinator)], tls))
            server.set_serving(True)
            federation.address = server.address
            stack.callback(federation.close)
            return federation

        yield start


def wait_for_round(stub: Stub, after_round: int, max_wait_s: float = 10.0) -> rounds_pb2.RoundAnnouncement:
    request = rounds_pb2.WaitForRoundRequest(after_round=after_round, max_wait_s=max_wait_s)
    return stub.WaitForRound(request, timeout=max_wait_s + 5.0)


def fetch(stub: Stub, announcement: rounds_pb2.RoundAnnouncement) -> Weights:
    chunks = stub.FetchModel(rounds_pb2.FetchModelRequest(round=announcement.round), timeout=CALL_TIMEOUT_S)
    return receive_model(chunks, SPEC, announcement.base_model_sha256)


def random_delta(seed: int, size: float = 0.1) -> Weights:
    rng = np.random.default_rng(seed)
    return {t.name: (size * rng.standard_normal(t.shape)).astype(np.float32) for t in SPEC.tensors}


def constant_delta(value: float) -> Weights:
    return {t.name: np.full(t.shape, value, dtype=np.float32) for t in SPEC.tensors}


def submit(
    stub: Stub,
    round_number: int,
    delta: Weights,
    *,
    examples: int,
    key: str,
    cohort: int = 5,
    jurisdiction: str = "EU",
) -> global_pb2.SubmitAggregateResponse:
    """Send `delta` as a regional of `jurisdiction` does: a header attesting its policy, then
    INT8 chunks. The default cohort of 5 silos meets every example policy's minimum."""
    header = global_pb2.AggregateHeader(
        round=round_number,
        cohort_size=cohort,
        example_total=examples,
        idempotency_key=key,
        policy_sha256=ATTESTATIONS[jurisdiction],
        compression="int8",
    )
    chunks = encode_tensors(
        SPEC, delta, encoding=tensors_pb2.ENCODING_INT8, rng=np.random.default_rng(len(key))
    )
    chunks = list(chunks)
    header.content_signature = SIGNERS[stub].sign(round_number, digest_chunks(chunks))
    messages = [global_pb2.AggregateMessage(header=header)]
    messages += [global_pb2.AggregateMessage(chunk=chunk) for chunk in chunks]
    return stub.SubmitAggregate(iter(messages), timeout=CALL_TIMEOUT_S)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert "Traceback" not in error.value.details()
    return error.value


def one_step(*deltas: Weights) -> dict[str, float]:
    """Per tensor, the largest int8 quantization step among `deltas` (max |x| / 127)."""
    return {name: max(float(np.abs(d[name]).max()) for d in deltas) / 127 for name in deltas[0]}


# --- rounds --------------------------------------------------------------------------------


def test_the_committed_model_is_the_base_plus_the_example_weighted_mean_of_the_int8_deltas(
    start_global: StartGlobal,
) -> None:
    federation = start_global(rounds=2, expected_jurisdictions=2, min_jurisdictions=2)
    eu, us = federation.regional("EU"), federation.regional("US")
    federation.start_rounds()

    first = wait_for_round(eu, after_round=0)
    assert (first.state, first.round) == (rounds_pb2.ROUND_STATE_OPEN, 1)
    assert first.base_model_sha256 == INITIAL_SHA256
    assert [t.name for t in first.model_spec.tensors] == ["dense/kernel", "dense/bias"]
    assert (first.training.epochs, first.training.batch_size) == (1, 4)
    assert 0 < first.deadline_in_s <= SETTINGS["round_deadline_s"]
    base = fetch(us, first)
    np.testing.assert_array_equal(base["dense/kernel"], INITIAL["dense/kernel"])

    eu_delta, us_delta = random_delta(1), random_delta(2, size=0.3)
    assert submit(eu, 1, eu_delta, examples=300, key="eu-1").accepted
    assert submit(us, 1, us_delta, examples=100, key="us-1", jurisdiction="US").accepted

    second = wait_for_round(eu, after_round=1)
    assert (second.state, second.round) == (rounds_pb2.ROUND_STATE_OPEN, 2)
    assert federation.store.versions() == [0, 1]
    assert second.base_model_sha256 == federation.store.sha256(1)
    committed = federation.store.load(1)
    step = one_step(eu_delta, us_delta)
    for name in committed:
        expected = INITIAL[name] + (300 * eu_delta[name] + 100 * us_delta[name]) / 400
        np.testing.assert_allclose(committed[name], expected, rtol=0, atol=step[name] + 1e-6)
    # What the next round hands out is exactly checkpoint 1 (receive_model checks the hash).
    np.testing.assert_array_equal(fetch(eu, second)["dense/bias"], committed["dense/bias"])


def test_a_round_closes_as_soon_as_every_registered_jurisdiction_submitted(start_global: StartGlobal) -> None:
    federation = start_global(round_deadline_s=60.0, expected_jurisdictions=2)
    eu, us = federation.regional("EU"), federation.regional("US")
    federation.start_rounds()
    wait_for_round(eu, after_round=0)

    submit(eu, 1, random_delta(1), examples=10, key="eu-1")
    submit(us, 1, random_delta(2), examples=10, key="us-1", jurisdiction="US")
    sent = time.monotonic()
    finished = wait_for_round(eu, after_round=1)

    assert finished.state == rounds_pb2.ROUND_STATE_FINISHED
    assert time.monotonic() - sent < 5.0  # nowhere near the 60 s deadline
    [summary] = federation.status().rounds
    assert summary.outcome == "committed"
    assert summary.wall_time_s < 30.0


def test_below_quorum_at_the_deadline_the_round_aborts_and_the_model_stays(start_global: StartGlobal) -> None:
    federation = start_global(rounds=2, round_deadline_s=1.5, expected_jurisdictions=2, min_jurisdictions=2)
    eu, _us = federation.regional("EU"), federation.regional("US")
    federation.start_rounds()
    wait_for_round(eu, after_round=0)
    submit(eu, 1, random_delta(1), examples=10, key="eu-1")

    second = wait_for_round(eu, after_round=1)

    assert (second.state, second.round) == (rounds_pb2.ROUND_STATE_OPEN, 2)
    assert second.base_model_sha256 == INITIAL_SHA256
    assert federation.store.versions() == [0]
    [summary] = federation.status().rounds
    assert summary.outcome == "aborted: quorum not met (1 of 2 jurisdictions)"
    assert list(summary.participants) == ["EU"]
    assert summary.model_sha256 == INITIAL_SHA256
    np.testing.assert_array_equal(fetch(eu, second)["dense/kernel"], INITIAL["dense/kernel"])


def test_the_first_round_waits_for_the_expected_jurisdictions(start_global: StartGlobal) -> None:
    federation = start_global(expected_jurisdictions=2, start_timeout_s=30.0)
    eu = federation.regional("EU")
    federation.start_rounds()
    assert wait_for_round(eu, after_round=0, max_wait_s=0.5).state == rounds_pb2.ROUND_STATE_WAITING

    federation.regional("US")
    announcement = wait_for_round(eu, after_round=0, max_wait_s=5.0)
    assert (announcement.state, announcement.round) == (rounds_pb2.ROUND_STATE_OPEN, 1)


def test_the_first_round_starts_without_a_missing_jurisdiction_after_the_start_timeout(
    start_global: StartGlobal,
) -> None:
    federation = start_global(expected_jurisdictions=2, start_timeout_s=0.5)
    eu = federation.regional("EU")
    federation.start_rounds()
    announcement = wait_for_round(eu, after_round=0, max_wait_s=5.0)
    assert (announcement.state, announcement.round) == (rounds_pb2.ROUND_STATE_OPEN, 1)


def test_after_the_planned_rounds_the_federation_is_finished(start_global: StartGlobal) -> None:
    federation = start_global(rounds=1)
    eu = federation.regional("EU")
    federation.start_rounds()
    wait_for_round(eu, after_round=0)
    submit(eu, 1, random_delta(1), examples=10, key="eu-1")

    assert wait_for_round(eu, after_round=1).state == rounds_pb2.ROUND_STATE_FINISHED
    assert wait_for_round(eu, after_round=0).state == rounds_pb2.ROUND_STATE_FINISHED
    status = federation.status()
    assert (status.state, status.current_round) == (rounds_pb2.ROUND_STATE_FINISHED, 1)
    assert federation.store.versions() == [0, 1]


def test_a_restarted_global_goes_on_after_its_newest_checkpoint(
    start_global: StartGlobal, tmp_path: Path
) -> None:
    first = start_global(rounds=3)
    eu = first.regional("EU")
    first.start_rounds()
    wait_for_round(eu, after_round=0)
    submit(eu, 1, constant_delta(0.5), examples=10, key="eu-1")
    assert wait_for_round(eu, after_round=1).round == 2
    first.close()  # stopped while round 2 is open: it stays open on disk

    again = start_global(rounds=3)  # the same state directory: the regional need not register again
    eu = again.stub(Identity("EU", Tier.REGIONAL, "regional-eu"))
    again.start_rounds()
    resumed = wait_for_round(eu, after_round=1)
    assert (resumed.round, resumed.base_model_sha256) == (2, again.store.sha256(1))
    submit(eu, 2, constant_delta(0.25), examples=10, key="eu-2")
    assert wait_for_round(eu, after_round=2).round == 3
    assert again.store.versions() == [0, 1, 2]
    np.testing.assert_allclose(again.store.load(2)["dense/bias"], INITIAL["dense/bias"] + 0.75, atol=0.01)


# --- aggregates ----------------------------------------------------------------------------


def test_an_aggregate_for_a_round_that_is_not_open_fails_its_precondition(start_global: StartGlobal) -> None:
    federation = start_global()
    eu = federation.regional("EU")

    early = refused(lambda: submit(eu, 1, random_delta(1), examples=10, key="eu-1"))
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert early.details() == "round 1 is not open; the open round is none"
    assert wait_for_round(eu, after_round=0, max_wait_s=0.2).state == rounds_pb2.ROUND_STATE_WAITING

    federation.start_rounds()
    wait_for_round(eu, after_round=0)
    wrong = refused(lambda: submit(eu, 2, random_delta(1), examples=10, key="eu-2"))
    assert wrong.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert wrong.details() == "round 2 is not open; the open round is 1"
    stale = refused(
        lambda: list(eu.FetchModel(rounds_pb2.FetchModelRequest(round=7), timeout=CALL_TIMEOUT_S))
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "round 7 is not open" in stale.details()


def test_a_resubmitted_aggregate_counts_once(start_global: StartGlobal) -> None:
    federation = start_global(expected_jurisdictions=2)
    eu, us = federation.regional("EU"), federation.regional("US")
    federation.start_rounds()
    wait_for_round(eu, after_round=0)

    first = submit(eu, 1, constant_delta(1.0), examples=100, key="eu-round-1")
    again = submit(eu, 1, constant_delta(1.0), examples=100, key="eu-round-1")  # a retry after a lost reply
    assert (first.accepted, first.duplicate) == (True, False)
    assert (again.accepted, again.duplicate) == (True, True)
    submit(us, 1, constant_delta(3.0), examples=100, key="us-round-1", jurisdiction="US")
    assert wait_for_round(eu, after_round=1).state == rounds_pb2.ROUND_STATE_FINISHED

    committed = federation.store.load(1)
    # Counted once: (1 + 3) / 2 = 2; counted twice it would be (1 + 1 + 3) / 3.
    np.testing.assert_allclose(committed["dense/bias"], INITIAL["dense/bias"] + 2.0, atol=1e-5)
    status = federation.status()
    assert [c.jurisdiction for c in status.contributions] == ["EU", "US"]
    assert status.rounds[0].example_total == 200


def test_a_second_different_aggregate_from_a_jurisdiction_is_refused(start_global: StartGlobal) -> None:
    federation = start_global(expected_jurisdictions=2)
    eu, us = federation.regional("EU"), federation.regional("US")
    federation.start_rounds()
    wait_for_round(eu, after_round=0)

    submit(eu, 1, constant_delta(1.0), examples=100, key="eu-a")
    second = refused(lambda: submit(eu, 1, constant_delta(9.0), examples=900, key="eu-b"))
    assert second.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert second.details() == "EU already contributed to round 1"
    submit(us, 1, constant_delta(3.0), examples=100, key="us-a", jurisdiction="US")
    wait_for_round(eu, after_round=1)

    committed = federation.store.load(1)
    np.testing.assert_allclose(committed["dense/bias"], INITIAL["dense/bias"] + 2.0, atol=1e-5)
    [summary] = federation.status().rounds
    # The refusal is recorded with its reason code and what the regional was told.
    assert [(r.sender, r.code, r.reason) for r in summary.rejections] == [
        ("EU", "update_refused", "EU already contributed to round 1")
    ]


# --- who may do what -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "identity",
    [
        Identity("EU", Tier.SILO, "hospital-a"),
        Identity("EU", Tier.OPERATOR, "ops"),
        Identity("GLOBAL", Tier.GLOBAL, "another-global"),
    ],
    ids=["silo", "operator", "global"],
)
def test_only_a_regional_certificate_may_register_or_submit(
    start_global: StartGlobal, identity: Identity
) -> None:
    federation = start_global()
    federation.regional("EU")
    federation.start_rounds()
    intruder = federation.stub(identity)

    register = refused(lambda: intruder.RegisterRegional(global_pb2.RegisterRegionalRequest(), timeout=10))
    assert register.code() == grpc.StatusCode.PERMISSION_DENIED
    assert register.details() == f"{identity} may not register as a regional aggregator; only regionals may"
    for call in (
        lambda: submit(intruder, 1, random_delta(1), examples=10, key="x"),
        lambda: wait_for_round(intruder, after_round=0, max_wait_s=0.1),
        lambda: list(intruder.FetchModel(rounds_pb2.FetchModelRequest(round=1), timeout=10)),
    ):
        error = refused(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only regionals may" in error.details()
    assert list(federation.status().registered_jurisdictions) == ["EU"]


def test_an_unregistered_regional_cannot_wait_fetch_or_submit(start_global: StartGlobal) -> None:
    federation = start_global()
    eu = federation.regional("EU")
    federation.start_rounds()
    wait_for_round(eu, after_round=0)

    strangers = [
        federation.stub(Identity("US", Tier.REGIONAL, "regional-us")),
        # Same jurisdiction, another node: EU's registered regional is regional-eu.
        federation.stub(Identity("EU", Tier.REGIONAL, "regional-eu-2")),
    ]
    for stranger in strangers:
        for call in (
            lambda s=stranger: wait_for_round(s, after_round=0, max_wait_s=0.1),
            lambda s=stranger: list(s.FetchModel(rounds_pb2.FetchModelRequest(round=1), timeout=10)),
            lambda s=stranger: submit(s, 1, random_delta(1), examples=10, key="x"),
        ):
            error = refused(call)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "must register before anything else" in error.details()
    assert list(federation.status().contributions) == []


def test_status_needs_an_operator_and_reports_rounds_and_contributions(start_global: StartGlobal) -> None:
    federation = start_global(expected_jurisdictions=2)
    eu, us = federation.regional("EU"), federation.regional("US")
    for caller in (eu, federation.stub(Identity("EU", Tier.SILO, "hospital-a"))):
        error = refused(lambda c=caller: c.GetStatus(global_pb2.GetGlobalStatusRequest(), timeout=10))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not read the federation's status" in error.details()
    federation.start_rounds()
    wait_for_round(eu, after_round=0)
    submit(eu, 1, random_delta(1), examples=300, key="eu-1", cohort=5)
    submit(us, 1, random_delta(2), examples=100, key="us-1", cohort=3, jurisdiction="US")
    wait_for_round(eu, after_round=1)

    status = federation.status()
    assert status.current_round == 1
    assert list(status.registered_jurisdictions) == ["EU", "US"]
    [summary] = status.rounds
    assert (summary.round, summary.outcome, list(summary.participants)) == (1, "committed", ["EU", "US"])
    assert summary.example_total == 400
    assert summary.model_sha256 == federation.store.sha256(1)
    assert summary.float32_bytes_equivalent == 2 * SPEC.float32_bytes
    contributions = {c.jurisdiction: c for c in status.contributions}
    assert [(c.round, c.cohort_size, c.example_total) for c in contributions.values()] == [
        (1, 5, 300),
        (1, 3, 100),
    ]
    for contribution in contributions.values():
        assert contribution.float32_bytes_equivalent == SPEC.float32_bytes
        # int8 is a quarter of float32, plus headers and framing.
        assert SPEC.total_elements < contribution.bytes_received < SPEC.float32_bytes / 3
    assert summary.bytes_received == sum(c.bytes_received for c in contributions.values())
