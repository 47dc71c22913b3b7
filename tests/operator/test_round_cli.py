"""`jurisfed round status|watch` against a real global aggregator over mTLS."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from global_agg.acceptance import Acceptance
from global_agg.coordinator import GlobalCoordinator, Schedule
from global_agg.plans import ContractIssuer, plan_from_settings
from global_agg.servicer import global_service
from jurisfed.audit.sink import MemoryAuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import issue
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.auth.token_keys import generate_token_key
from jurisfed.cli import main
from jurisfed.policy.guard import PolicyGuard
from jurisfed.rounds import TrainingConfig
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.server import serve
from jurisfed.tensors import ModelSpec, TensorSpec
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, rounds_pb2, tensors_pb2

SPEC = ModelSpec("test", (TensorSpec("dense/kernel", (8, 4)), TensorSpec("dense/bias", (4,))))
PLAN = plan_from_settings(
    rounds=1,
    round_deadline_s=30.0,
    min_jurisdictions=1,
    training=TrainingConfig(),
    compression="int8",
    jurisdictions=("EU",),
)


@pytest.fixture
def finished_federation(
    pki: Path, tmp_path: Path, example_guard: Callable[[str, Identity, MemoryAuditSink], PolicyGuard]
) -> Iterator[str]:
    """A global that ran one round, committed with the EU aggregate; yields its address."""
    initial = {t.name: np.zeros(t.shape, dtype=np.float32) for t in SPEC.tensors}
    identity = Identity("GLOBAL", Tier.GLOBAL, "global-1")
    audit = MemoryAuditSink()
    eu_guard = example_guard("EU", identity, audit)
    coordinator = GlobalCoordinator(
        identity,
        SPEC,
        initial,
        tmp_path / "state",
        Schedule(expected_jurisdictions=1, start_timeout_s=10.0),
        issuer=ContractIssuer.open(tmp_path / "state", None),
        acceptance=Acceptance(None, None),
        audit=audit,
        guard=example_guard("GLOBAL", identity, audit),
        members={"EU": eu_guard},
        initial_plan=PLAN,
    )
    tls = issue(pki, identity, tmp_path / "global")
    stop = threading.Event()
    with serve([global_service(coordinator)], tls) as server:
        server.set_serving(True)
        rounds = threading.Thread(target=coordinator.run, args=(stop,), daemon=True)
        rounds.start()
        regional_tls = issue(pki, Identity("EU", Tier.REGIONAL, "regional-eu"), tmp_path / "eu")
        with open_channel(server.address, regional_tls) as channel:
            eu = global_pb2_grpc.GlobalAggregatorStub(channel)
            eu.RegisterRegional(global_pb2.RegisterRegionalRequest(), timeout=10)
            eu.WaitForRound(rounds_pb2.WaitForRoundRequest(after_round=0, max_wait_s=10), timeout=15)
            header = global_pb2.AggregateHeader(
                round=1,
                cohort_size=5,
                example_total=120,
                idempotency_key="eu-1",
                policy_sha256=eu_guard.policy.sha256,
                compression="int8",
            )
            delta = {t.name: np.full(t.shape, 0.5, dtype=np.float32) for t in SPEC.tensors}
            chunks = list(
                encode_tensors(SPEC, delta, encoding=tensors_pb2.ENCODING_INT8, rng=np.random.default_rng(0))
            )
            signer = ContentSigner.from_tls_files(regional_tls)
            header.content_signature = signer.sign(1, digest_chunks(chunks))
            messages = [global_pb2.AggregateMessage(header=header)]
            messages += [global_pb2.AggregateMessage(chunk=c) for c in chunks]
            eu.SubmitAggregate(iter(messages), timeout=10)
            wait_until_finished(eu)
        yield server.address
        stop.set()
        rounds.join(timeout=10)


def wait_until_finished(regional: global_pb2_grpc.GlobalAggregatorStub) -> None:
    request = rounds_pb2.WaitForRoundRequest(after_round=1, max_wait_s=20)
    assert regional.WaitForRound(request, timeout=25).state == rounds_pb2.ROUND_STATE_FINISHED


def operator_args(pki: Path, tmp_path: Path, tier: Tier = Tier.OPERATOR) -> list[str]:
    """--tls-dir and --token-key of a console whose certificate is of `tier`."""
    directory = issue(pki, Identity("GLOBAL", tier, "ml-team"), tmp_path / f"cli-{tier.value}").cert.parent
    token_key = directory / "ml-team-1.key"
    generate_token_key(token_key)
    return ["--tls-dir", str(directory), "--token-key", str(token_key)]


def test_status_lists_each_round_with_its_outcome_and_jurisdictions(
    finished_federation: str, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["round", "status", "--global", finished_federation, *operator_args(pki, tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "federation: finished, round 1, jurisdictions EU" in out
    assert "round 1: committed; EU (120 examples" in out


def test_watch_follows_rounds_until_the_federation_finishes(
    finished_federation: str, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["round", "watch", "--global", finished_federation, *operator_args(pki, tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[-1] == "federation finished"
    assert "round 1: committed" in out


def test_status_without_the_operator_role_is_refused_plainly(
    finished_federation: str, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    silo_console = operator_args(pki, tmp_path, Tier.SILO)
    with pytest.raises(SystemExit) as refused:
        main(["round", "status", "--global", finished_federation, *silo_console])
    assert "jurisfed://GLOBAL/silo/ml-team cannot hold the operator role" in str(refused.value)
