"""Real aggregator processes for the round tests, and silos and regionals the test plays over the wire.

The global and the regionals are OS processes (python -m global_agg / regional) with real
certificates, token keys, key sets, revocation list and signed policies; the tests play silos
(and, where they say so, regionals) through the same mutual-TLS, token-carrying channels, or run
`scripted_silo.py` as a silo process they can kill or stop. `assert_rounds_add_up` checks, from a
tier's state directory alone, that every committed model is its base plus the weighted mean of
exactly the contributions recorded for its round.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from jurisfed.audit.events import AuditEvent, AuditRecord
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.auth.provisioning import Provisioner
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.auth.tokens import Role
from jurisfed.demo.fleet import Fleet, Member
from jurisfed.modeling.mlp import Mlp
from jurisfed.operator.client import OperatorClient
from jurisfed.policy.loader import read_policy
from jurisfed.policy.model import PrivacySpend
from jurisfed.rounds import RoundState
from jurisfed.rpc.channel import open_authenticated_channel
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import RoundStatus, TierState
from jurisfed.tensors import Weights, add
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

ARCH = Mlp.parse("mlp-4-8-3")
SPEC = ARCH.spec()
INITIAL = ARCH.initial_weights(0)  # the global's seed 0
CALL_S = 10.0
WAIT_S = 60.0
OPERATOR = Identity("GLOBAL", Tier.OPERATOR, "ml-team")
GLOBAL = Identity("GLOBAL", Tier.GLOBAL, "global-1")
SCRIPTED_SILO = Path(__file__).with_name("scripted_silo.py")
MEMBERS = ("EU", "IN", "US")


def one_silo_cohorts(text: str) -> str:
    """A policy edit: aggregates of a single silo may leave the jurisdiction."""
    return text.replace("min_cohort_silos: 5", "min_cohort_silos: 1").replace(
        "min_cohort_silos: 3", "min_cohort_silos: 1"
    )


POLICY_EDITS: dict[str, Callable[[str], str]] = {f"{j.lower()}.yaml": one_silo_cohorts for j in MEMBERS}


def write_plan(path: Path, **sections: Any) -> Path:
    """A round plan file: one EU silo or more, two rounds, short deadlines; `sections` replace keys."""
    plan: dict[str, Any] = {
        "name": "test",
        "rounds": 2,
        "cohort": {
            "jurisdictions": ["EU"],
            "min_silos_per_jurisdiction": 1,
            "max_silos_per_jurisdiction": 10,
        },
        "quorum": {"min_jurisdictions": 1},
        "deadlines": {"silo_s": 3.0, "regional_s": 3.5, "global_s": 6.0},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 0.1},
        "compression": {"silo_to_regional": {"codec": "raw"}, "regional_to_global": {"codec": "int8"}},
        **sections,
    }
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def regional_identity(jurisdiction: str) -> Identity:
    return Identity(jurisdiction, Tier.REGIONAL, f"regional-{jurisdiction.lower()}")


def constant(value: float) -> Weights:
    return {t.name: np.full(t.shape, value, dtype=np.float32) for t in SPEC.tensors}


@dataclass
class TestSilo:
    """A silo the test plays: registered with its regional, signing what it sends."""

    node: str
    stub: regional_pb2_grpc.RegionalAggregatorStub
    signer: ContentSigner

    def wait_for_task(self, after_round: int, max_wait_s: float = WAIT_S) -> rounds_pb2.RoundAnnouncement:
        request = rounds_pb2.WaitForRoundRequest(after_round=after_round, max_wait_s=max_wait_s)
        answer: rounds_pb2.RoundAnnouncement = retry(
            lambda: self.stub.WaitForTask(request, timeout=max_wait_s + 5)
        )
        return answer

    def next_round(self, after_round: int) -> rounds_pb2.RoundAnnouncement:
        """The next open round after `after_round` (waiting answers are skipped)."""
        give_up = time.monotonic() + WAIT_S
        while time.monotonic() < give_up:
            answer = self.wait_for_task(after_round, max_wait_s=5.0)
            if answer.state == rounds_pb2.ROUND_STATE_OPEN:
                return answer
            assert answer.state == rounds_pb2.ROUND_STATE_WAITING, answer
        raise AssertionError(f"{self.node}: no round after {after_round} opened")

    def fetch(self, round_number: int, base_sha256: str) -> Weights:
        request = rounds_pb2.FetchModelRequest(round=round_number)
        return retry(lambda: receive_model(self.stub.FetchModel(request, timeout=CALL_S), SPEC, base_sha256))

    def submit(
        self, round_number: int, delta: Weights, *, examples: int, key: str
    ) -> regional_pb2.SubmitUpdateResponse:
        chunks = list(encode_tensors(SPEC, delta))
        header = regional_pb2.UpdateHeader(
            round=round_number,
            example_count=examples,
            idempotency_key=key,
            train_loss=0.5,
            content_signature=self.signer.sign(round_number, digest_chunks(chunks)),
        )
        messages = [regional_pb2.UpdateMessage(header=header)]
        messages += [regional_pb2.UpdateMessage(chunk=c) for c in chunks]
        response: regional_pb2.SubmitUpdateResponse = retry(
            lambda: self.stub.SubmitUpdate(iter(messages), timeout=CALL_S)
        )
        return response

    def take_part(self, after_round: int, value: float, *, examples: int = 50) -> int:
        """Wait for the next round, fetch its model, send a constant delta; the round's number."""
        task = self.next_round(after_round)
        self.fetch(task.round, task.base_model_sha256)
        assert self.submit(
            task.round, constant(value), examples=examples, key=f"{self.node}-{task.round}"
        ).accepted
        return task.round


# The example policies' layers that stay in their jurisdiction.
LOCAL_LAYERS = {"EU": ("head/bias",)}


@dataclass
class TestRegional:
    """A regional the test plays toward the global: int8 aggregates, signed, with its policy's hash,
    without the layers its policy keeps local."""

    jurisdiction: str
    stub: global_pb2_grpc.GlobalAggregatorStub
    signer: ContentSigner
    policy_sha256: str

    def wait_for_round(self, after_round: int, max_wait_s: float = 5.0) -> rounds_pb2.RoundAnnouncement:
        request = rounds_pb2.WaitForRoundRequest(after_round=after_round, max_wait_s=max_wait_s)
        answer: rounds_pb2.RoundAnnouncement = retry(
            lambda: self.stub.WaitForRound(request, timeout=max_wait_s + 5)
        )
        return answer

    def next_round(self, after_round: int) -> rounds_pb2.RoundAnnouncement:
        give_up = time.monotonic() + WAIT_S
        while time.monotonic() < give_up:
            answer = self.wait_for_round(after_round)
            if answer.state == rounds_pb2.ROUND_STATE_OPEN:
                return answer
        raise AssertionError(f"{self.jurisdiction}: no round after {after_round} opened")

    def fetch(self, announcement: rounds_pb2.RoundAnnouncement) -> Weights:
        request = rounds_pb2.FetchModelRequest(round=announcement.round)
        chunks = self.stub.FetchModel(request, timeout=CALL_S)
        return receive_model(chunks, SPEC, announcement.base_model_sha256)

    def submit(
        self,
        round_number: int,
        delta: Weights,
        *,
        examples: int,
        key: str,
        cohort: int = 5,
        privacy: PrivacySpend | None = None,
    ) -> global_pb2.SubmitAggregateResponse:
        """Send `delta` as this jurisdiction's aggregate; `privacy`: the DP spend it declares."""
        rng = np.random.default_rng(len(key))
        withheld = LOCAL_LAYERS.get(self.jurisdiction, ())
        sent = SPEC.without(withheld)
        values = {t.name: delta[t.name] for t in sent.tensors}
        chunks = list(encode_tensors(sent, values, encoding=tensors_pb2.ENCODING_INT8, rng=rng))
        header = global_pb2.AggregateHeader(
            round=round_number,
            cohort_size=cohort,
            example_total=examples,
            idempotency_key=key,
            withheld_tensors=withheld,
            policy_sha256=self.policy_sha256,
            compression="int8",
            content_signature=self.signer.sign(round_number, digest_chunks(chunks)),
        )
        if privacy is not None:
            header.dp_epsilon, header.dp_delta = privacy.epsilon, privacy.delta
            header.dp_period_days = privacy.period_days
        messages = [global_pb2.AggregateMessage(header=header)]
        messages += [global_pb2.AggregateMessage(chunk=c) for c in chunks]
        response: global_pb2.SubmitAggregateResponse = retry(
            lambda: self.stub.SubmitAggregate(iter(messages), timeout=CALL_S)
        )
        return response


@dataclass
class Cluster:
    """Aggregator processes under one directory, and the certificates and keys to reach them."""

    directory: Path
    policies: Path
    nodes: Provisioner
    fleet: Fleet
    addresses: dict[str, str] = field(default_factory=dict)
    configs: dict[str, dict[str, object]] = field(default_factory=dict)
    _channels: list[grpc.Channel] = field(default_factory=list)
    _scripted: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, ca: Path, policies: Path) -> Cluster:
        return cls(directory, policies, Provisioner(ca, directory / "pki"), Fleet(directory))

    def tls(self, identity: Identity) -> TlsFiles:
        return self.nodes.tls(identity)

    def start_global(self, *, port: int = 0, **settings: object) -> Member:
        callers = {OPERATOR: Role.OPERATOR, **{regional_identity(j): Role.REGIONAL for j in MEMBERS}}
        config: dict[str, object] = {
            "state_dir": str(self.directory / "global"),
            "tls": _tls_keys(self.tls(GLOBAL)),
            "token_keys": str(self.nodes.key_set(GLOBAL, callers)),
            "crl": str(self.nodes.crl),
            "policy": str(self.policies / "global.yaml"),
            "member_policies": [str(self.policies / f"{j.lower()}.yaml") for j in MEMBERS],
            "policy_keys": str(self.policies / "keys"),
            "listen": f"127.0.0.1:{port}",
            "architecture": "mlp-4-8-3",
            "expected_jurisdictions": 1,
            **settings,
        }
        self.configs["global"] = config
        return self._start("global", "global_agg", config)

    def kill(self, member: Member) -> None:
        """SIGKILL `member` and wait for it; its exit is the test's doing, not a failure."""
        member.process.kill()
        member.process.wait()
        self.fleet.members.remove(member)

    def restart(self, name: str, module: str, as_name: str) -> Member:
        """Start `name` again with its configuration (state and port included), logging to `as_name`."""
        return self._start(as_name, module, self.configs[name], address_of=name)

    def start_regional(
        self, jurisdiction: str, silos: Sequence[str], *, port: int = 0, **settings: object
    ) -> Member:
        identity = regional_identity(jurisdiction)
        callers = {
            OPERATOR: Role.OPERATOR,
            **{Identity(jurisdiction, Tier.SILO, s): Role.SILO for s in silos},
        }
        token = self.nodes.token(identity)
        config: dict[str, object] = {
            "jurisdiction": jurisdiction,
            "global_address": self.addresses["global"],
            "state_dir": str(self.directory / f"regional-{jurisdiction}"),
            "tls": _tls_keys(self.tls(identity)),
            "token": {"key": str(token.key), "kid": token.kid},
            "token_keys": str(self.nodes.key_set(identity, callers)),
            "crl": str(self.nodes.crl),
            "policy": str(self.policies / f"{jurisdiction.lower()}.yaml"),
            "policy_keys": str(self.policies / "keys"),
            "contract_key": str(self.directory / "global" / "contract.key.pub"),
            "listen": f"127.0.0.1:{port}",
            "min_silos": 1,
            "forward_margin_s": 1.0,
            # These runs end with their plan: the regional tells its silos the federation finished.
            "exit_when_finished": True,
            **settings,
        }
        name = f"regional-{jurisdiction}"
        self.configs[name] = config
        return self._start(name, "regional", config)

    def _start(
        self, name: str, module: str, config: dict[str, object], *, address_of: str | None = None
    ) -> Member:
        member = self.fleet.start(name, module, config, ready=True)
        self.addresses[address_of or name] = self.fleet.address_of(member, timeout_s=WAIT_S)
        return member

    def channel(self, address: str, identity: Identity, role: Role, server: Tier) -> grpc.Channel:
        tokens = self.nodes.token(identity).minter(identity, role)
        channel, _ = open_authenticated_channel(address, self.tls(identity), tokens, expect=server)
        self._channels.append(channel)
        return channel

    def silo(
        self, jurisdiction: str, node: str, *, examples: int = 50, schema: str = "", code_version: str = ""
    ) -> TestSilo:
        identity = Identity(jurisdiction, Tier.SILO, node)
        channel = self.channel(self.addresses[f"regional-{jurisdiction}"], identity, Role.SILO, Tier.REGIONAL)
        stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
        request = regional_pb2.RegisterSiloRequest(
            example_count=examples, schema_sha256=schema, code_version=code_version
        )
        stub.RegisterSilo(request, timeout=CALL_S)
        return TestSilo(node, stub, ContentSigner.from_tls_files(self.tls(identity)))

    def regional_played(self, jurisdiction: str) -> TestRegional:
        identity = regional_identity(jurisdiction)
        channel = self.channel(self.addresses["global"], identity, Role.REGIONAL, Tier.GLOBAL)
        stub = global_pb2_grpc.GlobalAggregatorStub(channel)
        stub.RegisterRegional(global_pb2.RegisterRegionalRequest(code_version="test"), timeout=CALL_S)
        attestation = read_policy(self.policies / f"{jurisdiction.lower()}.yaml").sha256
        return TestRegional(jurisdiction, stub, ContentSigner.from_tls_files(self.tls(identity)), attestation)

    def scripted_silo(self, jurisdiction: str, node: str, *args: str) -> subprocess.Popen[bytes]:
        """scripted_silo.py as silo `node`; its progress lines go to DIRECTORY/NODE.progress."""
        identity = Identity(jurisdiction, Tier.SILO, node)
        token = self.nodes.token(identity)
        tls_dir = self.tls(identity).cert.parent
        progress = self.directory / f"{node}.progress"
        command = [
            sys.executable,
            str(SCRIPTED_SILO),
            self.addresses[f"regional-{jurisdiction}"],
            str(tls_dir),
        ]
        command += [str(token.key), token.kid, jurisdiction, node, str(progress), *args]
        log = (self.directory / "logs" / f"{node}.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._scripted.append(process)
        return process

    def progress(self, node: str, line: str, timeout_s: float = WAIT_S) -> None:
        """Wait until scripted silo `node` reported `line`."""
        path = self.directory / f"{node}.progress"
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if path.exists() and line in path.read_text().splitlines():
                return
            time.sleep(0.05)
        shown = path.read_text() if path.exists() else "(nothing)"
        raise AssertionError(f"{node} never reported {line!r}; it reported:\n{shown}")

    def operator(self, *regionals: str) -> OperatorClient:
        tokens = self.nodes.token(OPERATOR).minter(OPERATOR, Role.OPERATOR)
        addresses = {j: self.addresses[f"regional-{j}"] for j in regionals}
        return OperatorClient(self.tls(OPERATOR), tokens, self.addresses["global"], addresses)

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """`jurisfed round ...` as the ML team runs it, with the operator's certificate and token key."""
        credentials = ["--tls-dir", str(self.tls(OPERATOR).cert.parent)]
        credentials += ["--token-key", str(self.nodes.token(OPERATOR).key)]
        action, *rest = arguments
        command = [sys.executable, "-m", "jurisfed", "round", action, "--global", self.addresses["global"]]
        return subprocess.run(
            [*command, *credentials, *rest], capture_output=True, text=True, timeout=60, check=False
        )

    def wait_for(self, what: str, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            assert not self.fleet.failures(), self.fleet.failures()
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.directory / 'logs'}")

    def wait_until_finished(self) -> None:
        with self.operator() as operator:
            self.wait_for(
                "the federation to finish", lambda: operator.federation().state is RoundState.FINISHED
            )

    def state(self, tier: str) -> TierState:
        return TierState(self.directory / tier / "state.sqlite")

    def blobs(self, tier: str) -> BlobStore:
        return BlobStore(self.directory / tier / "blobs")

    def audit(self, tier: str) -> list[AuditEvent]:
        lines = (self.directory / tier / "audit.log.jsonl").read_bytes().splitlines()
        return [AuditRecord.from_line(line).event for line in lines]

    def log(self, name: str) -> str:
        return (self.directory / "logs" / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for process in self._scripted:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.fleet.stop(grace_s=5.0)


def retry(call: Callable[[], Any], attempts: int = 40) -> Any:
    """`call`, again while its server is (re)starting (UNAVAILABLE)."""
    for _ in range(attempts - 1):
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.25)
    return call()


def assert_rounds_add_up(cluster: Cluster, tier: str) -> None:
    """Every committed round of `tier`: its model is its base plus the example-weighted mean of
    exactly the contributions recorded for it (each participant once), folded from their blobs."""
    state, blobs = cluster.state(tier), cluster.blobs(tier)
    for record in state.rounds():
        if record.state not in (RoundStatus.COMMITTED, RoundStatus.ROLLED_BACK):
            continue
        contributions = state.contributions(record.number)
        participants = [c.participant for c in contributions]
        assert len(participants) == len(set(participants)), (tier, record.number, participants)
        sums = {t.name: np.zeros(t.shape, dtype=np.float32) for t in SPEC.tensors}
        weights = dict.fromkeys(sums, 0.0)
        for contribution in contributions:
            carried = SPEC.without(contribution.withheld)
            update = blobs.get_weights(contribution.content_sha256, carried)
            for name, values in update.items():
                sums[name] += values * np.float32(contribution.example_count)
                weights[name] += contribution.example_count
        mean = {
            name: sums[name] / np.float32(weights[name]) if weights[name] else sums[name] for name in sums
        }
        expected = add(blobs.get_weights(record.base_sha256, SPEC), mean)
        model = blobs.get_weights(state.checkpoint(record.number).blob_sha256, SPEC)
        for name in expected:
            np.testing.assert_allclose(
                model[name], expected[name], rtol=0, atol=1e-6, err_msg=f"{tier} {name}"
            )


def every_blob_is_accounted_for(cluster: Cluster, tier: str) -> set[str]:
    """Blobs of `tier` that no record names (a partial upload would be one)."""
    state, blobs = cluster.state(tier), cluster.blobs(tier)
    named = {c.blob_sha256 for c in state.checkpoints()}
    for record in state.rounds():
        named |= {record.contract_sha256, record.base_sha256, record.model_sha256}
        named |= {c.content_sha256 for c in state.contributions(record.number)}
    return set(blobs.names()) - named


def announced_round(announcement: rounds_pb2.RoundAnnouncement) -> int:
    return serde.round_announcement_from_proto(announcement).round


def _tls_keys(files: TlsFiles) -> dict[str, str]:
    return {"ca_cert": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key)}
