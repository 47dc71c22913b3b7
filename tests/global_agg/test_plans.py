"""Plans at the global aggregator: a plan the tiers cannot carry out is refused before it runs,
the configuration keys describe a plan of their own, and round contracts are signed with a key
kept in the state directory that regionals verify them with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from global_agg.plans import ContractIssuer, check_runnable, plan_from_settings
from jurisfed.audit.keys import load_public_keys
from jurisfed.errors import InvalidInput, Unauthenticated
from jurisfed.gates import GateConfig
from jurisfed.round_contract import BaseCheckpoint, verify_contract
from jurisfed.round_plan import Aggregation, Cohort, Compression, HopCompression, Privacy, RoundPlan
from jurisfed.rounds import TrainingConfig

PLAN = RoundPlan(name="ml", rounds=3, cohort=Cohort(jurisdictions=("EU", "US")))
BASE = BaseCheckpoint(version=2, sha256="ab" * 32, architecture="mlp-4-8-3")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {
                "aggregation": Aggregation(
                    jurisdictions="dp_gaussian(noise_multiplier=1.1, clip=1, clients=3)"
                )
            },
            "aggregation.jurisdictions: 'dp_gaussian(noise_multiplier=1.1, clip=1, clients=3)' adds DP noise",
        ),
        ({"gates": GateConfig(min_accuracy=0.8)}, "gates.min_accuracy: this global holds no probe set"),
    ],
)
def test_a_plan_the_tiers_cannot_carry_out_is_refused_before_it_runs(
    change: dict[str, object], words: str
) -> None:
    plan = dataclasses.replace(PLAN, **change)
    with pytest.raises(InvalidInput, match="round plan ml cannot run here") as refused:
        check_runnable(plan, has_probe_set=False)
    assert words in str(refused.value)


def test_robust_rules_screening_and_central_dp_at_the_regionals_are_runnable() -> None:
    robust = Aggregation(silos="screen() > trimmed_mean(trim=0.2)", jurisdictions="screen() > median")
    check_runnable(dataclasses.replace(PLAN, aggregation=robust), has_probe_set=False)
    private = Aggregation(silos="clip(norm=5) > dp_gaussian(noise_multiplier=1.1, clip=1, clients=3)")
    plan = dataclasses.replace(PLAN, aggregation=private, privacy=Privacy(max_epsilon=3.0))
    check_runnable(plan, has_probe_set=False)


def test_a_runnable_plan_passes_with_any_codec_on_either_hop() -> None:
    check_runnable(dataclasses.replace(PLAN, gates=GateConfig(max_accuracy_drop=0.05)), has_probe_set=True)
    check_runnable(dataclasses.replace(PLAN, gates=GateConfig(max_update_norm=10.0)), has_probe_set=False)
    for codec in ("raw", "int8", "int8-blocks", "top-k", "top-k-int8"):
        hops = Compression(HopCompression(codec), HopCompression(codec))
        check_runnable(dataclasses.replace(PLAN, compression=hops), has_probe_set=False)


def test_the_configuration_keys_describe_a_plan() -> None:
    plan = plan_from_settings(
        rounds=4,
        round_deadline_s=60.0,
        min_jurisdictions=2,
        training=TrainingConfig(epochs=3),
        compression="int8",
        jurisdictions=("US", "EU"),
    )
    assert (plan.name, plan.rounds, plan.cohort.jurisdictions, plan.quorum.min_jurisdictions) == (
        "config",
        4,
        ("EU", "US"),
        2,
    )
    assert (plan.deadlines.silo_s, plan.deadlines.regional_s, plan.deadlines.global_s) == (57.0, 57.0, 60.0)
    assert plan.compression.regional_to_global.codec == "int8"
    check_runnable(plan, has_probe_set=False)
    with pytest.raises(ValueError, match="exceeds"):
        plan_from_settings(
            rounds=1,
            round_deadline_s=60.0,
            min_jurisdictions=3,
            training=TrainingConfig(),
            compression="none",
            jurisdictions=("EU",),
        )


def test_contracts_are_signed_with_a_key_kept_in_the_state_directory(tmp_path: Path) -> None:
    issuer = ContractIssuer.open(tmp_path, None)
    signed = issuer.issue(PLAN, 3, BASE)
    public = load_public_keys(tmp_path / "contract.key.pub")[0]
    assert verify_contract(signed.canonical, signed.signature, public) == signed.contract
    assert (signed.contract.round, signed.contract.base) == (3, BASE)
    again = ContractIssuer.open(tmp_path, None)  # after a restart: the same key, the same signature
    assert again.key_id == issuer.key_id
    assert again.resign(signed.contract).signature == signed.signature
    other = ContractIssuer.open(tmp_path / "elsewhere", None)
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_contract(signed.canonical, other.issue(PLAN, 3, BASE).signature, public)
