"""Round plans and round contracts: the plan file an ML engineer writes is validated with errors
that name the key; each round's contract has one canonical form and hash however the plan was
spelt, and a contract signed by the global verifies only if not one byte of it changed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit.keys import create_signing_key, key_id, load_public_keys, load_signing_key, public_path
from jurisfed.demo.partition import (
    DEMO_JURISDICTIONS,
    DEMO_ROUNDS,
    DEMO_SILOS_PER_JURISDICTION,
    DEMO_TRAINING,
)
from jurisfed.errors import ConfigError, InvalidInput, Unauthenticated, WrongState
from jurisfed.gates import GateConfig
from jurisfed.round_contract import (
    CONTRACT_CONTEXT,
    BaseCheckpoint,
    RoundContract,
    contract_for,
    sign_contract,
    verify_announced,
    verify_contract,
)
from jurisfed.round_plan import RoundPlan, load_plan
from jurisfed.rounds import RoundAnnouncement, RoundState

REPO = Path(__file__).resolve().parents[1]
DEMO_PLAN = REPO / "deploy" / "plans" / "demo.yaml"
BASE = BaseCheckpoint(version=4, sha256="c" * 64, architecture="mlp-64-256-128-10")
ISSUED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

MINIMAL = """
name: minimal
rounds: 3
cohort: {jurisdictions: [EU, US]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def plan_from(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> RoundPlan:
    return load_plan(write(tmp_path, text), environ=environ or {})


def test_the_demo_plan_matches_the_demo() -> None:
    plan = load_plan(DEMO_PLAN, environ={})

    assert plan.name == "demo"
    assert plan.rounds == DEMO_ROUNDS == 10
    assert plan.cohort.jurisdictions == DEMO_JURISDICTIONS == ("EU", "IN", "US")
    assert plan.cohort.max_silos_per_jurisdiction == DEMO_SILOS_PER_JURISDICTION
    assert plan.training == DEMO_TRAINING
    assert plan.quorum.min_jurisdictions == 2
    assert (plan.deadlines.silo_s, plan.deadlines.regional_s, plan.deadlines.global_s) == (
        100.0,
        110.0,
        120.0,
    )
    assert str(plan.aggregation.silos_rule()) == str(plan.aggregation.jurisdictions_rule()) == "mean"
    assert plan.compression.silo_to_regional.to_codec().kind.value == "raw"
    assert plan.compression.regional_to_global.to_codec().kind.value == "int8"
    assert plan.privacy.max_epsilon is None
    assert plan.gates == GateConfig(max_accuracy_drop=0.1, max_update_norm=100.0)
    assert plan.eligibility.min_examples == 30
    assert plan.eligibility.schema_sha256 is None


def test_a_minimal_plan_takes_the_defaults(tmp_path: Path) -> None:
    plan = plan_from(tmp_path, MINIMAL)
    assert plan == RoundPlan(name="minimal", rounds=3, cohort=plan.cohort)
    assert plan.compression.regional_to_global.codec == "raw"
    assert plan.gates == GateConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ncohort: {jurisdictions: [EU]}\n", "config key rounds is required"),
        (MINIMAL + "rounds_total: 3\n", "unknown config key.*rounds_total"),
        (MINIMAL.replace("jurisdictions:", "jurisdiction:"), "cohort.jurisdiction"),
        (MINIMAL + "training: {epochs: two}\n", "config key training.epochs must be an integer"),
        (MINIMAL.replace("[EU, US]", "[EU, eu]"), "in cohort: jurisdiction 'eu' must be 2-16 uppercase"),
        (MINIMAL.replace("[EU, US]", "[EU, EU]"), "in cohort: jurisdictions must be distinct"),
        (MINIMAL.replace("[EU, US]", "[EU, GLOBAL]"), "GLOBAL is the global aggregator's"),
        (
            MINIMAL.replace("US]}", "US], min_silos_per_jurisdiction: 4, max_silos_per_jurisdiction: 3}"),
            "min_silos_per_jurisdiction \\(4\\) <= max_silos_per_jurisdiction \\(3\\)",
        ),
        (MINIMAL + "quorum: {min_jurisdictions: 3}\n", "quorum.min_jurisdictions \\(3\\) exceeds the 2"),
        (MINIMAL + "deadlines: {regional_s: 130}\n", "in deadlines: need silo_s .* < global_s"),
        (MINIMAL + "aggregation: {silos: 'median > mean'}\n", "in aggregation: silos: rule 'median > mean'"),
        (
            MINIMAL + "compression: {regional_to_global: {codec: gzip}}\n",
            "in compression.regional_to_global: codec 'gzip' is unknown",
        ),
        (
            MINIMAL + "compression: {silo_to_regional: {codec: int8, density: 0.1}}\n",
            "in compression.silo_to_regional: int8 keeps every value",
        ),
        (
            MINIMAL + "privacy: {max_epsilon: 3}\n",
            "privacy.max_epsilon is 3, but aggregation.silos \\('mean'\\)",
        ),
        (MINIMAL + "gates: {max_accuracy_drop: 5}\n", "in gates: max_accuracy_drop is a fraction"),
        (MINIMAL + "eligibility: {min_examples: 0}\n", "in eligibility: min_examples must be at least 1"),
        (MINIMAL + "training: {epochs: 0}\n", "training.epochs \\(0\\) and training.batch_size"),
        (MINIMAL.replace("minimal", "a plan"), "name 'a plan' must be"),
    ],
)
def test_mistakes_are_refused_naming_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        plan_from(tmp_path, text)
    assert str(raised.value).startswith(f"round plan {tmp_path / 'plan.yaml'}: ")


def test_a_dp_budget_is_accepted_with_a_dp_rule_at_the_regionals(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        MINIMAL
        + "aggregation: {silos: 'clip(norm=5) > dp_gaussian(noise_multiplier=1.1, clip=1, clients=3)'}\n"
        + "privacy: {max_epsilon: 3, delta: 1.0e-6}\n",
    )
    assert plan.privacy.max_epsilon == 3.0
    assert plan.privacy.delta == 1e-6


def test_environment_variables_override_plan_keys(tmp_path: Path) -> None:
    plan = plan_from(tmp_path, MINIMAL, {"JURISFED_PLAN_ROUNDS": "7", "JURISFED_PLAN_TRAINING_EPOCHS": "4"})
    assert (plan.rounds, plan.training.epochs) == (7, 4)
    with pytest.raises(ConfigError, match="JURISFED_PLAN_ROUND"):
        plan_from(tmp_path, MINIMAL, {"JURISFED_PLAN_ROUND": "7"})


def test_a_contract_carries_the_round_its_base_and_every_section() -> None:
    plan = load_plan(DEMO_PLAN, environ={})

    contract = contract_for(plan, 5, base=BASE, issued_at=ISSUED)
    body = json.loads(contract.canonical_json())

    assert body["round"] == 5
    assert body["plan"] == "demo"
    assert body["contract_version"] == 1
    assert body["issued_at"] == "2024-05-01T12:00:00Z"
    assert body["base"] == {"version": 4, "sha256": "c" * 64, "architecture": "mlp-64-256-128-10"}
    assert body["training"] == {"epochs": 5, "batch_size": 8, "learning_rate": 0.2, "proximal_mu": 0.01}
    assert body["cohort"]["jurisdictions"] == ["EU", "IN", "US"]
    assert body["compression"]["regional_to_global"] == {"codec": "int8", "density": 1, "block_size": 256}
    assert body["gates"] == {
        "max_accuracy_drop": 0.1,
        "min_accuracy": None,
        "max_loss_increase": None,
        "max_update_norm": 100,
    }
    assert set(body) == {f.name for f in dataclasses.fields(RoundContract)}
    assert RoundContract.from_canonical_json(contract.canonical_json()) == contract
    assert contract.sha256 == hashlib.sha256(contract.canonical_json()).hexdigest()


def test_plans_spelt_differently_give_byte_identical_contracts(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(
        "name: p\nrounds: 2\ncohort: {jurisdictions: [EU, US]}\n"
        "aggregation: {silos: 'clip(norm=5) > mean'}\ngates: {max_update_norm: 50}\n"
        "compression: {regional_to_global: {codec: int8}}\n"
    )
    two = tmp_path / "two.yaml"
    two.write_text(
        "compression:\n  regional_to_global: {codec: int8, density: 1.0}\ngates:\n  max_update_norm: 50.0\n"
        "aggregation:\n  silos: clip(norm=5.0)>mean\n  jurisdictions: mean\n"
        "cohort:\n  jurisdictions: [EU, US]\nrounds: 2\nname: p\n"
    )
    issued_elsewhere = ISSUED.astimezone(timezone(timedelta(hours=5, minutes=30)))

    first = contract_for(load_plan(one, environ={}), 1, base=BASE, issued_at=ISSUED)
    second = contract_for(load_plan(two, environ={}), 1, base=BASE, issued_at=issued_elsewhere)

    assert first.canonical_json() == second.canonical_json()
    assert first.sha256 == second.sha256
    assert first.aggregation.silos == "clip(norm=5.0) > mean"
    assert contract_for(load_plan(one, environ={}), 2, base=BASE, issued_at=ISSUED).sha256 != first.sha256
    other_base = dataclasses.replace(BASE, sha256="d" * 64)
    assert (
        contract_for(load_plan(one, environ={}), 1, base=other_base, issued_at=ISSUED).sha256 != first.sha256
    )


def test_a_signed_contract_verifies_with_the_globals_key_from_its_pem_files(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "contracts.key"
    create_signing_key(key_path)
    contract = contract_for(load_plan(DEMO_PLAN, environ={}), 1, base=BASE, issued_at=ISSUED)

    signed = sign_contract(contract, load_signing_key(key_path))
    [public_key] = load_public_keys(public_path(key_path))

    assert signed.key_id == key_id(public_key)
    assert verify_contract(signed.canonical, signed.signature, public_key) == contract


def test_tampering_with_a_signed_contract_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    contract = contract_for(load_plan(DEMO_PLAN, environ={}), 1, base=BASE, issued_at=ISSUED)
    signed = sign_contract(contract, key)
    lowered = signed.canonical.replace(b'"min_jurisdictions":2', b'"min_jurisdictions":1')
    assert lowered != signed.canonical

    with pytest.raises(Unauthenticated, match="does not verify: the contract was altered"):
        verify_contract(lowered, signed.signature, key.public_key())
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_contract(signed.canonical, signed.signature, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(Unauthenticated, match="is 0 bytes"):
        verify_contract(signed.canonical, b"", key.public_key())
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_contract(signed.canonical, flipped, key.public_key())


def test_only_the_canonical_bytes_of_a_valid_contract_verify_even_with_a_good_signature() -> None:
    key = Ed25519PrivateKey.generate()
    contract = contract_for(load_plan(DEMO_PLAN, environ={}), 1, base=BASE, issued_at=ISSUED)
    pretty = json.dumps(json.loads(contract.canonical_json()), indent=2).encode()
    with pytest.raises(InvalidInput, match="not in canonical form"):
        verify_contract(pretty, key.sign(CONTRACT_CONTEXT + pretty), key.public_key())

    body = json.loads(contract.canonical_json())
    body["contract_version"] = 2
    future = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(InvalidInput, match="contract_version 2 is not 1"):
        verify_contract(future, key.sign(CONTRACT_CONTEXT + future), key.public_key())

    # A signature made without the contract context (over the bare bytes) is another message.
    with pytest.raises(Unauthenticated):
        verify_contract(contract.canonical_json(), key.sign(contract.canonical_json()), key.public_key())


def test_a_contract_needs_a_time_zone_and_a_valid_base() -> None:
    plan = load_plan(DEMO_PLAN, environ={})
    with pytest.raises(InvalidInput, match="time zone"):
        contract_for(plan, 1, base=BASE, issued_at=datetime(2024, 5, 1, 12, 0))
    with pytest.raises(ValueError, match="sha256 must be 64 lowercase hex digits"):
        BaseCheckpoint(version=1, sha256="not a hash", architecture="mlp-64-10")
    with pytest.raises(ValueError, match="round must be at least 1"):
        contract_for(plan, 0, base=BASE, issued_at=ISSUED)


def _announcement(signed: RoundContract, signature: bytes, **changes: object) -> RoundAnnouncement:
    announced = RoundAnnouncement(
        state=RoundState.OPEN,
        round=signed.round,
        model_spec=None,
        training=signed.training,
        deadline_in_s=10.0,
        base_model_sha256=signed.base.sha256,
        contract=signed.canonical_json(),
        contract_signature=signature,
    )
    return dataclasses.replace(announced, **changes)


def test_a_silo_trains_only_for_a_signed_contract_that_matches_the_announcement() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_contract(
        contract_for(load_plan(DEMO_PLAN, environ={}), 5, base=BASE, issued_at=ISSUED), key
    )
    contract = signed.contract
    good = _announcement(contract, signed.signature)
    assert verify_announced(good, key.public_key(), architecture=BASE.architecture) == contract

    with pytest.raises(Unauthenticated, match="carries no signed contract"):
        verify_announced(
            _announcement(contract, b"", contract=b""), key.public_key(), architecture=BASE.architecture
        )
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_announced(good, other, architecture=BASE.architecture)
    relayed_wrongly = {
        "round": {"round": 6},
        "training": {"training": dataclasses.replace(contract.training, epochs=contract.training.epochs + 1)},
    }
    for what, changes in relayed_wrongly.items():
        with pytest.raises(WrongState, match=f"another {what} than its signed contract"):
            verify_announced(
                _announcement(contract, signed.signature, **changes),
                key.public_key(),
                architecture=BASE.architecture,
            )
    with pytest.raises(WrongState, match="another architecture"):
        verify_announced(good, key.public_key(), architecture="mlp-4-8-3")
