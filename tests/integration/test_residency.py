"""Residency enforced by real processes: a global and regional aggregators as OS processes over
mutual TLS, each loading its signed policy; the test plays the silos (and, where a regional
would never misbehave on its own, a misbehaving regional) over the real wire.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from jurisfed.audit.events import AuditRecord, Decision, EventKind
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.auth.provisioning import Provisioner
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.auth.tokens import Role
from jurisfed.demo.fleet import Fleet, Member
from jurisfed.modeling.mlp import Mlp
from jurisfed.operator.client import FederationStatus, OperatorClient
from jurisfed.policy.loader import read_policy
from jurisfed.rounds import RoundState
from jurisfed.rpc.channel import open_authenticated_channel
from jurisfed.tensors import Weights
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import (
    global_pb2,
    global_pb2_grpc,
    regional_pb2,
    regional_pb2_grpc,
    rounds_pb2,
    tensors_pb2,
)

pytestmark = pytest.mark.slow

ARCH = Mlp.parse("mlp-4-8-3")
CALL_S = 10.0
WAIT_S = 90.0
PolicyEdits = dict[str, Callable[[str], str]]


class Federation:
    """Aggregators as processes under one policy directory, and the certificates to reach them."""

    def __init__(self, directory: Path, pki: Path, policies: Path) -> None:
        self.directory, self.policies = directory, policies
        self.nodes = Provisioner(pki, directory / "pki")
        self.fleet = Fleet(directory)
        self.addresses: dict[str, str] = {}
        self._channels: list[grpc.Channel] = []

    def tls(self, identity: Identity) -> TlsFiles:
        return self.nodes.tls(identity)

    def start_global(self, **settings: object) -> str:
        identity = Identity("GLOBAL", Tier.GLOBAL, "global-1")
        callers = {OPERATOR: Role.OPERATOR, **{_regional(j): Role.REGIONAL for j in ("EU", "IN", "US")}}
        config = {
            "state_dir": str(self.directory / "global"),
            "tls": _tls_keys(self.tls(identity)),
            "token_keys": str(self.nodes.key_set(identity, callers)),
            "crl": str(self.nodes.crl),
            "policy": str(self.policies / "global.yaml"),
            "member_policies": [str(self.policies / f"{j}.yaml") for j in ("eu", "in", "us")],
            "policy_keys": str(self.policies / "keys"),
            "listen": "127.0.0.1:0",
            "architecture": "mlp-4-8-3",
            "rounds": 1,
            "round_deadline_s": 60.0,
            **settings,
        }
        member = self.fleet.start("global", "global_agg", config, ready=True)
        self.addresses["GLOBAL"] = self.fleet.address_of(member, timeout_s=WAIT_S)
        return self.addresses["GLOBAL"]

    def start_regional(self, jurisdiction: str, **settings: object) -> Member:
        identity = _regional(jurisdiction)
        callers = {OPERATOR: Role.OPERATOR, Identity(jurisdiction, Tier.SILO, "hospital-a"): Role.SILO}
        token = self.nodes.token(identity)
        config = {
            "jurisdiction": jurisdiction,
            "global_address": self.addresses["GLOBAL"],
            "state_dir": str(self.directory / f"regional-{jurisdiction}"),
            "tls": _tls_keys(self.tls(identity)),
            "token": {"key": str(token.key), "kid": token.kid},
            "token_keys": str(self.nodes.key_set(identity, callers)),
            "crl": str(self.nodes.crl),
            "policy": str(self.policies / f"{jurisdiction.lower()}.yaml"),
            "policy_keys": str(self.policies / "keys"),
            "listen": "127.0.0.1:0",
            "min_silos": 1,
            "forward_margin_s": 5.0,
            **settings,
        }
        member = self.fleet.start(f"regional-{jurisdiction}", "regional", config, ready=True)
        self.addresses[jurisdiction] = self.fleet.address_of(member, timeout_s=WAIT_S)
        return member

    def channel(self, address: str, identity: Identity, role: Role, server: Tier) -> grpc.Channel:
        """A channel as `identity` would open it: mTLS plus a fresh token on every call."""
        tokens = self.nodes.token(identity).minter(identity, role)
        channel, _ = open_authenticated_channel(address, self.tls(identity), tokens, expect=server)
        self._channels.append(channel)
        return channel

    def silo(self, jurisdiction: str) -> Silo:
        """The silo hospital-a of `jurisdiction`, registered with that jurisdiction's regional."""
        identity = Identity(jurisdiction, Tier.SILO, "hospital-a")
        channel = self.channel(self.addresses[jurisdiction], identity, Role.SILO, Tier.REGIONAL)
        stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
        stub.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=50), timeout=CALL_S)
        return Silo(stub, ContentSigner.from_tls_files(self.tls(identity)))

    def operator(self) -> OperatorClient:
        regionals = {j: a for j, a in self.addresses.items() if j != "GLOBAL"}
        tokens = self.nodes.token(OPERATOR).minter(OPERATOR, Role.OPERATOR)
        return OperatorClient(self.tls(OPERATOR), tokens, self.addresses["GLOBAL"], regionals)

    def wait_until_finished(self) -> FederationStatus:
        with self.operator() as operator:
            give_up = time.monotonic() + WAIT_S
            while time.monotonic() < give_up:
                assert not self.fleet.failures(), self.fleet.failures()
                status = operator.federation()
                if status.state is RoundState.FINISHED:
                    return status
                time.sleep(0.2)
        pytest.fail(f"the federation did not finish; logs in {self.directory / 'logs'}")

    def audit(self, tier_dir: str) -> list[AuditRecord]:
        lines = (self.directory / tier_dir / "audit.log.jsonl").read_bytes().splitlines()
        return [AuditRecord.from_line(line) for line in lines]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.fleet.stop()


@pytest.fixture
def federation(
    tmp_path: Path, pki: Path, signed_policy_set: Callable[[Path, PolicyEdits], Path]
) -> Iterator[Callable[[PolicyEdits], Federation]]:
    started: list[Federation] = []

    def make(edits: PolicyEdits) -> Federation:
        policies = signed_policy_set(tmp_path / "policies", edits)
        running = Federation(tmp_path / "run", pki, policies)
        started.append(running)
        return running

    yield make
    for running in started:
        running.close()


@dataclass(frozen=True)
class Silo:
    stub: regional_pb2_grpc.RegionalAggregatorStub
    signer: ContentSigner


OPERATOR = Identity("GLOBAL", Tier.OPERATOR, "ml-team")


def _regional(jurisdiction: str) -> Identity:
    return Identity(jurisdiction, Tier.REGIONAL, f"regional-{jurisdiction.lower()}")


def _tls_keys(files: TlsFiles) -> dict[str, str]:
    return {"ca_cert": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key)}


def _take_part(silo: Silo, value: float) -> None:
    """One silo's round: wait for the task, fetch the model, send a signed constant delta."""
    stub = silo.stub
    announcement = stub.WaitForTask(
        rounds_pb2.WaitForRoundRequest(after_round=0, max_wait_s=WAIT_S), timeout=WAIT_S + 5
    )
    assert announcement.state == rounds_pb2.ROUND_STATE_OPEN
    spec = serde.model_spec_from_proto(announcement.model_spec)
    chunks = stub.FetchModel(rounds_pb2.FetchModelRequest(round=announcement.round), timeout=CALL_S)
    receive_model(chunks, spec, announcement.base_model_sha256)
    delta: Weights = {t.name: np.full(t.shape, value, dtype=np.float32) for t in spec.tensors}
    chunks = list(encode_tensors(spec, delta))
    header = regional_pb2.UpdateHeader(
        round=announcement.round,
        example_count=50,
        idempotency_key="u-1",
        train_loss=0.5,
        content_signature=silo.signer.sign(announcement.round, digest_chunks(chunks)),
    )
    messages = [regional_pb2.UpdateMessage(header=header)]
    messages += [regional_pb2.UpdateMessage(chunk=c) for c in chunks]
    assert stub.SubmitUpdate(iter(messages), timeout=CALL_S).accepted


def _one_silo_cohorts(text: str) -> str:
    return text.replace("min_cohort_silos: 5", "min_cohort_silos: 1").replace(
        "min_cohort_silos: 3", "min_cohort_silos: 1"
    )


def _no_compression(text: str) -> str:
    return _one_silo_cohorts(text).replace("      compression_required: true\n", "")


def test_a_contract_local_policy_refuses_is_declined_with_its_rule_and_the_round_goes_on(
    federation: Callable[[PolicyEdits], Federation],
) -> None:
    # The round asks for uncompressed aggregates. US and the global accept that; EU's policy
    # requires compression, and IN's a cohort of three silos, which one silo cannot meet.
    running = federation(
        {"us.yaml": _no_compression, "global.yaml": _no_compression, "eu.yaml": _one_silo_cohorts}
    )
    running.start_global(upstream_compression="none", expected_jurisdictions=3, min_jurisdictions=1)
    for jurisdiction in ("EU", "IN", "US"):
        running.start_regional(jurisdiction)
    silos = {j: running.silo(j) for j in ("EU", "IN", "US")}  # each regional joins once it has one
    _take_part(silos["US"], 0.25)

    status = running.wait_until_finished()

    [summary] = status.rounds
    assert (summary.outcome, summary.participants) == ("committed", ("US",))
    refusals = {r.jurisdiction: r for r in status.refusals}
    assert set(refusals) == {"EU", "IN"}
    assert refusals["EU"].rule_id == "eu-aggregates-to-global"
    assert "compress" in refusals["EU"].reason
    assert refusals["IN"].rule_id == "in-aggregates-to-named-locations"
    assert "1 silo(s) contributed, at least 3 required" in refusals["IN"].reason
    with running.operator() as operator:
        eu_rounds = operator.regional("EU").rounds
    assert [r.outcome.split(":")[0] for r in eu_rounds] == ["declined"]
    # The decision is in EU's own tamper-evident log, with its rule and the policy's hash ...
    eu_policy = read_policy(running.policies / "eu.yaml")
    denials = [
        r.event
        for r in running.audit("regional-EU")
        if r.event.kind is EventKind.POLICY_DECISION and r.event.decision is Decision.DENY
    ]
    assert [(e.rule, e.policy_hash, e.round_number) for e in denials] == [
        ("eu-aggregates-to-global", eu_policy.sha256, 1)
    ]
    # ... and the global recorded who declined and why.
    declined = [r.event for r in running.audit("global") if r.event.kind is EventKind.CONTRACT_DECISION]
    assert {(e.jurisdiction, e.rule) for e in declined} == {
        ("EU", "eu-aggregates-to-global"),
        ("IN", "in-aggregates-to-named-locations"),
    }
    # The command line the ML team uses shows the refusals.
    operator_dir = running.tls(OPERATOR).cert.parent
    token_key = running.nodes.token(OPERATOR).key
    command = ["round", "status", "--global", running.addresses["GLOBAL"], "--tls-dir", str(operator_dir)]
    command += ["--token-key", str(token_key)]
    shown = subprocess.run(
        [sys.executable, "-m", "jurisfed", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "round 1: EU declined by its policy, rule eu-aggregates-to-global" in shown.stdout


def test_a_global_hosted_where_a_policy_does_not_allow_receives_nothing_from_that_jurisdiction(
    federation: Callable[[PolicyEdits], Federation],
) -> None:
    # The global moves to Mumbai. IN's policy allows aggregates there; EU's allows Mumbai only
    # with differential privacy, which this round does not apply.
    def move_to_mumbai(text: str) -> str:
        return (
            text.replace("hosting_location: ch-zurich", "hosting_location: in-mumbai")
            .replace(
                "  ch-zurich:\n    place: Zurich, Switzerland\n    jurisdiction: CH\n",
                "  in-mumbai:\n    place: Mumbai, India\n    jurisdiction: IN\n",
            )
            .replace("hosted_in: [ch-zurich]", "hosted_in: [in-mumbai]")
        )

    running = federation(
        {"global.yaml": move_to_mumbai, "eu.yaml": _one_silo_cohorts, "in.yaml": _one_silo_cohorts}
    )
    running.start_global(expected_jurisdictions=2, min_jurisdictions=1)
    running.start_regional("EU")
    running.start_regional("IN")
    eu, india = running.silo("EU"), running.silo("IN")
    _take_part(india, 0.5)

    status = running.wait_until_finished()

    [summary] = status.rounds
    assert (summary.outcome, summary.participants) == ("committed", ("IN",))
    assert [c.jurisdiction for c in status.contributions] == ["IN"]
    [refusal] = status.refusals
    assert (refusal.jurisdiction, refusal.rule_id) == ("EU", "eu-private-aggregates-elsewhere")
    assert "differential privacy" in refusal.reason
    received = [r.event for r in running.audit("global") if r.event.kind is EventKind.AGGREGATE_RECEIVED]
    assert {e.jurisdiction for e in received} == {"IN"}
    # EU's silo was never asked for an update it could not send anywhere.
    with pytest.raises(grpc.RpcError) as refused:
        eu.stub.FetchModel(rounds_pb2.FetchModelRequest(round=1), timeout=CALL_S).next()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_global_refuses_an_aggregate_below_the_exporters_minimum_cohort(
    federation: Callable[[PolicyEdits], Federation],
) -> None:
    running = federation({})
    running.start_global(expected_jurisdictions=1)
    # A regional that would forward two silos' aggregate although EU's policy requires five.
    eu_regional = _regional("EU")
    stub = global_pb2_grpc.GlobalAggregatorStub(
        running.channel(running.addresses["GLOBAL"], eu_regional, Role.REGIONAL, Tier.GLOBAL)
    )
    signer = ContentSigner.from_tls_files(running.tls(eu_regional))
    stub.RegisterRegional(global_pb2.RegisterRegionalRequest(), timeout=CALL_S)
    stub.WaitForRound(rounds_pb2.WaitForRoundRequest(after_round=0, max_wait_s=WAIT_S), timeout=WAIT_S + 5)
    eu_policy = read_policy(running.policies / "eu.yaml")

    def send(cohort: int, key: str) -> global_pb2.SubmitAggregateResponse:
        header = global_pb2.AggregateHeader(
            round=1,
            cohort_size=cohort,
            example_total=100 * cohort,
            idempotency_key=key,
            withheld_tensors=["head/bias"],
            policy_sha256=eu_policy.sha256,
            compression="int8",
        )
        spec = ARCH.spec().without(["head/bias"])
        delta = {t.name: np.full(t.shape, 0.1, dtype=np.float32) for t in spec.tensors}
        rng = np.random.default_rng(0)
        chunks = list(encode_tensors(spec, delta, encoding=tensors_pb2.ENCODING_INT8, rng=rng))
        header.content_signature = signer.sign(1, digest_chunks(chunks))
        messages = [global_pb2.AggregateMessage(header=header)]
        messages += [global_pb2.AggregateMessage(chunk=c) for c in chunks]
        response: global_pb2.SubmitAggregateResponse = stub.SubmitAggregate(iter(messages), timeout=CALL_S)
        return response

    with pytest.raises(grpc.RpcError) as refused:
        send(2, "small")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "rule eu-aggregates-to-global" in refused.value.details()
    assert "2 silo(s) contributed, at least 5 required" in refused.value.details()
    assert "Traceback" not in refused.value.details()
    assert send(5, "honest").accepted  # nothing else disturbed: the round takes the honest one

    status = running.wait_until_finished()
    assert [(s.outcome, s.participants) for s in status.rounds] == [("committed", ("EU",))]
    decisions = [r.event for r in running.audit("global") if r.event.kind is EventKind.POLICY_DECISION]
    assert (Decision.DENY, "eu-aggregates-to-global") in {(e.decision, e.rule) for e in decisions}


def test_an_eu_silo_is_refused_by_the_us_regional_and_by_its_own_policy(
    federation: Callable[[PolicyEdits], Federation], tmp_path: Path
) -> None:
    running = federation({})
    running.start_global(expected_jurisdictions=1, start_timeout_s=600)
    running.start_regional("US")
    eu_silo = Identity("EU", Tier.SILO, "hospital-a")
    # The US regional refuses an EU certificate before any handler runs ...
    channel = running.channel(running.addresses["US"], eu_silo, Role.SILO, Tier.REGIONAL)
    stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.RegisterSilo(regional_pb2.RegisterSiloRequest(example_count=50), timeout=CALL_S)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to jurisdiction EU; this server serves only US" in refused.value.details()

    # ... and a real EU silo pointed at the US regional refuses to send it anything (exit 4).
    data = tmp_path / "train.npz"
    rng = np.random.default_rng(0)
    np.savez(data, features=rng.random((40, 4), dtype=np.float32), labels=rng.integers(0, 3, 40))
    config = {
        "jurisdiction": "EU",
        "regional_address": running.addresses["US"],
        "data": str(data),
        "tls": _tls_keys(running.tls(eu_silo)),
        "token": {"key": str(running.nodes.token(eu_silo).key), "kid": running.nodes.token(eu_silo).kid},
        "policy": str(running.policies / "eu.yaml"),
        "policy_keys": str(running.policies / "keys"),
        "state_dir": str(tmp_path / "silo"),
    }
    (tmp_path / "silo.yaml").write_text(yaml.safe_dump(config))
    finished = subprocess.run(
        [sys.executable, "-m", "silo", "--config", str(tmp_path / "silo.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 4, finished.stderr[-3000:]
    assert "refused by policy eu-residency v2, rule default-deny" in finished.stderr
    assert "to US regional" in finished.stderr
    assert "Traceback" not in finished.stderr
    with running.operator() as operator:
        assert operator.regional("US").silos == ()
    lines = (tmp_path / "silo" / "audit.log.jsonl").read_bytes().splitlines()
    silo_log = [AuditRecord.from_line(line).event for line in lines]
    assert [(e.kind, e.decision, e.rule) for e in silo_log if e.kind is EventKind.POLICY_DECISION] == [
        (EventKind.POLICY_DECISION, Decision.DENY, "default-deny")
    ]
