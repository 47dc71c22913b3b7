"""`jurisfed demo`: a whole federation on this machine, trained on non-IID digits.

One global aggregator, one regional aggregator per jurisdiction and its silos run as separate
OS processes talking gRPC over mutual TLS on localhost, each under its jurisdiction's signed
residency policy (deploy/policies by default). The demo plays the operator: it provisions
certificates, writes each process its config, watches the rounds through the
operator status RPCs, evaluates every committed checkpoint on held-out data and writes the
results. The held-out test splits stand in for each jurisdiction's own evaluation data; in a
real deployment they never leave the jurisdiction either.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from jurisfed.audit.keys import public_path
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.pki import TlsFiles, create_ca
from jurisfed.auth.provisioning import Provisioner
from jurisfed.auth.tokens import Role, TokenKeyFile
from jurisfed.demo.fleet import Fleet, FleetError, Member
from jurisfed.demo.partition import DEFAULT_TEST_FRACTION, Partition, load_split, partition_digits
from jurisfed.demo.plan import demo_plan, write_probe_set
from jurisfed.demo.report import DemoResults, RoundResult
from jurisfed.errors import ConfigError, NotFound
from jurisfed.modeling.mlp import DIGITS_MLP
from jurisfed.operator.client import FederationStatus, OperatorClient
from jurisfed.policy.engine import requirements
from jurisfed.policy.errors import PolicyError
from jurisfed.policy.loader import read_policy
from jurisfed.policy.model import Artifact, Endpoint, Policy
from jurisfed.rounds import RoundState, RoundSummary
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import TierState
from jurisfed.wire import serde

GLOBAL = Identity(GLOBAL_JURISDICTION, Tier.GLOBAL, "global-1")
OPERATOR = Identity(GLOBAL_JURISDICTION, Tier.OPERATOR, "demo-operator")
# The example policies and the public keys of their approver, in the source tree.
DEFAULT_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
MARKER = ".jurisfed-demo"
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class DemoSettings:
    out_dir: Path
    rounds: int
    jurisdictions: tuple[str, ...]
    # At least this many silos per jurisdiction; more where its policy needs a larger cohort.
    silos_per_jurisdiction: int
    alpha: float
    seed: int
    round_deadline_s: float
    start_timeout_s: float
    # global.yaml, one <jurisdiction>.yaml each, and keys/ with the approvers' public keys.
    policies: Path


@dataclass(frozen=True)
class _Policies:
    directory: Path
    global_policy: Policy
    members: dict[str, Policy]

    @property
    def keys(self) -> Path:
        return self.directory / "keys"

    def file(self, jurisdiction: str) -> Path:
        return self.directory / f"{jurisdiction.lower()}.yaml"

    def silos_needed(self, jurisdiction: str, at_least: int) -> int:
        """`at_least`, or the cohort the jurisdiction's policy requires behind an aggregate."""
        member = self.members[jurisdiction]
        needs = requirements(
            member,
            Artifact.AGGREGATE,
            Endpoint(Tier.REGIONAL, jurisdiction, member.hosting_location),
            Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, self.global_policy.hosting_location),
        )
        return max(at_least, needs.min_cohort_silos or 1)


def _read_policies(directory: Path, jurisdictions: tuple[str, ...]) -> _Policies:
    """The policies the processes will load (they check the signatures; this only plans)."""
    try:
        global_policy = read_policy(directory / "global.yaml")
        members = {j: read_policy(directory / f"{j.lower()}.yaml") for j in jurisdictions}
    except (PolicyError, OSError) as error:
        raise ConfigError(f"demo policies in {directory}: {error}") from None
    return _Policies(directory, global_policy, members)


def run_demo(settings: DemoSettings, say: Callable[[str], None]) -> DemoResults:
    out = _prepare(settings.out_dir)
    policies = _read_policies(settings.policies, settings.jurisdictions)
    counts = [policies.silos_needed(j, settings.silos_per_jurisdiction) for j in settings.jurisdictions]
    say(
        f"partitioning the digits data over {len(settings.jurisdictions)} jurisdictions "
        f"(Dirichlet alpha {settings.alpha}); silos: "
        + ", ".join(f"{j} {n}" for j, n in zip(settings.jurisdictions, counts, strict=True))
        + " (as many as each policy requires behind an aggregate)"
    )
    partition = partition_digits(
        out / "data",
        settings.jurisdictions,
        counts,
        alpha=settings.alpha,
        seed=settings.seed,
        test_fraction=DEFAULT_TEST_FRACTION,
    )
    say("provisioning a federation CA and a certificate for every node")
    pki = Provisioner(create_ca(out / "pki" / "ca"), out / "pki")
    fleet = Fleet(out)
    try:
        members = _start_federation(settings, partition, policies, pki, fleet, say)
        results = _watch(settings, partition, pki, fleet, members, say)
        say("federation finished; shutting every process down")
        fleet.wait_for_exit(members["silos"], timeout_s=60.0)
        # Regionals first: each hands the global its final audit checkpoint as it stops.
        fleet.stop(members["regionals"])
        fleet.stop(members["global"])
    finally:
        fleet.stop()
    failures = fleet.failures()
    if failures:
        raise FleetError("\n".join(failures))
    return results


def _prepare(out: Path) -> Path:
    """An empty output directory; only a directory a previous demo made is ever cleared."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"{out} exists and was not made by `jurisfed demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by jurisfed demo; cleared by the next run\n")
    return out.resolve()


def _tls(files: TlsFiles) -> dict[str, str]:
    return {"ca_cert": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key)}


def _token(key: TokenKeyFile) -> dict[str, str]:
    return {"key": str(key.key), "kid": key.kid}


def _telemetry(fleet: Fleet, name: str) -> dict[str, str]:
    """Each process writes its (residency-filtered) spans to OUT/spans/NAME.jsonl."""
    return {"spans_file": str(fleet.directory / "spans" / f"{name}.jsonl")}


def _regional_identity(jurisdiction: str) -> Identity:
    return Identity(jurisdiction, Tier.REGIONAL, f"regional-{jurisdiction.lower()}")


def _start_federation(
    settings: DemoSettings,
    partition: Partition,
    policies: _Policies,
    pki: Provisioner,
    fleet: Fleet,
    say: Callable[[str], None],
) -> dict[str, list[Member]]:
    keys = str(policies.keys)
    plan_file = fleet.directory / "config" / "plan.yaml"  # JSON is YAML
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan = demo_plan(
        settings.rounds,
        settings.round_deadline_s,
        settings.jurisdictions,
        [len(j.silos) for j in partition.jurisdictions],
    )
    plan_file.write_bytes(serde.round_plan_to_json(plan) + b"\n")
    probe = write_probe_set(partition.test_path, fleet.directory / "data" / "probe.npz")
    regional_ids = [_regional_identity(j.name) for j in partition.jurisdictions]
    global_callers = {OPERATOR: Role.OPERATOR, **dict.fromkeys(regional_ids, Role.REGIONAL)}
    # Every regional and silo checks each round's contract against the global's public key.
    contract_public = str(public_path(pki.contract_key(GLOBAL)))
    global_member = fleet.start(
        "global",
        "global_agg",
        {
            "state_dir": str(fleet.directory / "global"),
            "tls": _tls(pki.tls(GLOBAL)),
            "policy": str(policies.directory / "global.yaml"),
            "member_policies": [str(policies.file(j)) for j in settings.jurisdictions],
            "policy_keys": keys,
            "token_keys": str(pki.key_set(GLOBAL, global_callers)),
            "crl": str(pki.crl),
            "audit_key": str(pki.audit_key(GLOBAL)),
            "contract_key": str(pki.contract_key(GLOBAL)),
            "witness_peers": [pki.witness_entry(r) for r in regional_ids],
            "telemetry": _telemetry(fleet, "global"),
            "listen": "127.0.0.1:0",
            "plan": str(plan_file),
            "probe_set": str(probe),
            "expected_jurisdictions": len(settings.jurisdictions),
            "start_timeout_s": settings.start_timeout_s,
        },
        ready=True,
    )
    global_address = fleet.address_of(global_member, timeout_s=60.0)
    say(f"global aggregator serving on {global_address}")
    regionals: list[Member] = []
    for index, (jurisdiction, identity) in enumerate(zip(partition.jurisdictions, regional_ids, strict=True)):
        silo_ids = [Identity(jurisdiction.name, Tier.SILO, silo.name) for silo in jurisdiction.silos]
        callers = {OPERATOR: Role.OPERATOR, **dict.fromkeys(silo_ids, Role.SILO)}
        regionals.append(
            fleet.start(
                f"regional-{jurisdiction.name}",
                "regional",
                {
                    "jurisdiction": jurisdiction.name,
                    "global_address": global_address,
                    "state_dir": str(fleet.directory / f"regional-{jurisdiction.name}"),
                    "tls": _tls(pki.tls(identity)),
                    "policy": str(policies.file(jurisdiction.name)),
                    "policy_keys": keys,
                    "token": _token(pki.token(identity)),
                    "token_keys": str(pki.key_set(identity, callers)),
                    "crl": str(pki.crl),
                    "audit_key": str(pki.audit_key(identity)),
                    "contract_key": contract_public,
                    "witness_peers": [pki.witness_entry(GLOBAL)],
                    "witness_interval_s": 10.0,
                    "telemetry": _telemetry(fleet, f"regional-{jurisdiction.name}"),
                    "listen": "127.0.0.1:0",
                    "min_silos": len(jurisdiction.silos),
                    # The demo ends with its plan: the regional tells its silos, and they exit.
                    "exit_when_finished": True,
                    # Reproducible runs: the same --seed gives the same table.
                    "quantization_seed": settings.seed * 1000 + index,
                },
                ready=True,
            )
        )
    silos: list[Member] = []
    for jurisdiction, regional in zip(partition.jurisdictions, regionals, strict=True):
        address = fleet.address_of(regional, timeout_s=60.0)
        say(f"regional aggregator {jurisdiction.name} serving on {address}")
        for silo in jurisdiction.silos:
            identity = Identity(jurisdiction.name, Tier.SILO, silo.name)
            silos.append(
                fleet.start(
                    silo.name,
                    "silo",
                    {
                        "jurisdiction": jurisdiction.name,
                        "regional_address": address,
                        "data": str(silo.train_path),
                        "tls": _tls(pki.tls(identity)),
                        "policy": str(policies.file(jurisdiction.name)),
                        "policy_keys": keys,
                        "token": _token(pki.token(identity)),
                        "state_dir": str(fleet.directory / silo.name),
                        "contract_key": contract_public,
                        "telemetry": _telemetry(fleet, silo.name),
                        "seed": settings.seed,
                        "exit_when_finished": True,
                    },
                    ready=False,
                )
            )
    say(f"started {len(silos)} silos; they load TensorFlow and register before round 1 opens")
    return {"global": [global_member], "regionals": regionals, "silos": silos}


def _watch(
    settings: DemoSettings,
    partition: Partition,
    pki: Provisioner,
    fleet: Fleet,
    members: dict[str, list[Member]],
    say: Callable[[str], None],
) -> DemoResults:
    global_member = members["global"][0]
    regional_addresses = {
        j.name: fleet.address_of(m, timeout_s=1.0)
        for j, m in zip(partition.jurisdictions, members["regionals"], strict=True)
    }
    operator = OperatorClient(
        pki.tls(OPERATOR),
        pki.token(OPERATOR).minter(OPERATOR, Role.OPERATOR),
        fleet.address_of(global_member, timeout_s=1.0),
        regional_addresses,
    )
    evaluator = _Evaluator(partition, fleet.directory)
    results = DemoResults(settings.rounds, tuple(j.name for j in partition.jurisdictions))
    reported: set[int] = set()
    give_up = (
        time.monotonic() + settings.start_timeout_s + settings.rounds * (settings.round_deadline_s + 30.0)
    )
    last_heartbeat = time.monotonic()
    try:
        while time.monotonic() < give_up:
            failures = fleet.failures()
            if failures:
                raise FleetError("\n".join(failures))
            status = _federation_status(operator)
            if status is not None:
                for summary in status.rounds:
                    if summary.round not in reported:
                        reported.add(summary.round)
                        row = evaluator.round_result(summary, status, operator)
                        results.rounds.append(row)
                        say(row.progress_line(settings.rounds))
                        last_heartbeat = time.monotonic()
                if status.state is RoundState.FINISHED and len(reported) == len(status.rounds):
                    return results
                if time.monotonic() - last_heartbeat > HEARTBEAT_S:
                    say(_heartbeat(status, operator, partition))
                    last_heartbeat = time.monotonic()
            time.sleep(0.5)
        raise FleetError(
            f"the federation did not finish {settings.rounds} rounds in time; "
            f"logs are in {fleet.directory / 'logs'}"
        )
    finally:
        operator.close()


def _federation_status(operator: OperatorClient) -> FederationStatus | None:
    """The global's status, or None while it is briefly unreachable (the watch simply retries)."""
    try:
        return operator.federation()
    except grpc.RpcError:
        return None


def _heartbeat(status: FederationStatus, operator: OperatorClient, partition: Partition) -> str:
    if status.current_round == 0:
        waiting = []
        for jurisdiction in partition.jurisdictions:
            try:
                registered = len(operator.regional(jurisdiction.name).silos)
            except grpc.RpcError:
                registered = 0
            waiting.append(f"{jurisdiction.name} {registered}/{len(jurisdiction.silos)}")
        return "waiting for silos to register: " + ", ".join(waiting)
    arrived = sorted({c.jurisdiction for c in status.contributions if c.round == status.current_round})
    return f"round {status.current_round} open; aggregates in from: {', '.join(arrived) or 'none yet'}"


class _Evaluator:
    """Accuracy of committed models on the held-out test splits (numpy, no TensorFlow), read from
    each tier's state: the global's model after each round, each regional's personalized models."""

    def __init__(self, partition: Partition, run_dir: Path) -> None:
        self._spec = DIGITS_MLP.spec()
        self._global = BlobStore(run_dir / "global" / "blobs")
        self._personalized = {
            j.name: (
                TierState(run_dir / f"regional-{j.name}" / "state.sqlite"),
                BlobStore(run_dir / f"regional-{j.name}" / "blobs"),
            )
            for j in partition.jurisdictions
        }
        self._overall = load_split(partition.test_path)
        self._splits = {j.name: load_split(j.test_path) for j in partition.jurisdictions}

    def round_result(
        self, summary: RoundSummary, status: FederationStatus, operator: OperatorClient
    ) -> RoundResult:
        model = self._global.get_weights(summary.model_sha256, self._spec)
        global_by_j = {name: DIGITS_MLP.accuracy(model, *split) for name, split in self._splits.items()}
        personalized: dict[str, float | None] = {}
        silo_bytes = silo_float32 = 0
        for name, split in self._splits.items():
            state, blobs = self._personalized[name]
            try:
                personal = blobs.get_weights(state.checkpoint(summary.round).blob_sha256, self._spec)
                personalized[name] = DIGITS_MLP.accuracy(personal, *split)
            except NotFound:
                personalized[name] = None
            for regional_round in operator.regional(name).rounds:
                if regional_round.round == summary.round:
                    silo_bytes += regional_round.bytes_received
                    silo_float32 += regional_round.float32_bytes_equivalent
        contributions = [c for c in status.contributions if c.round == summary.round]
        return RoundResult(
            round=summary.round,
            outcome=summary.outcome,
            jurisdictions=summary.participants,
            global_accuracy=DIGITS_MLP.accuracy(model, *self._overall),
            global_accuracy_by_jurisdiction=global_by_j,
            personalized_accuracy=personalized,
            silo_to_regional_bytes=silo_bytes,
            silo_to_regional_float32_bytes=silo_float32,
            regional_to_global_bytes=sum(c.bytes_received for c in contributions),
            regional_to_global_float32_bytes=sum(c.float32_bytes_equivalent for c in contributions),
            wall_time_s=summary.wall_time_s,
        )
