"""Round plans at the global aggregator: what this federation can run, and the signed contracts.

A plan comes from `jurisfed round start --plan` or from the configuration file (a `plan` file,
or, without one, the plan its keys describe: `rounds`, `round_deadline_s`, `min_jurisdictions`,
`training`, `upstream_compression`). Before a plan runs, `check_runnable` refuses what the tiers
cannot carry out yet, so a plan never promises, in a signed contract, a rule nobody applies:
DP noise at the global (the regionals apply it, before the border), and gates on probe accuracy or
loss when the global holds no probe set; every codec of jurisfed.compression runs on both hops.
`ContractIssuer` derives each round's contract from the plan and signs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit.keys import create_signing_key, key_id, load_signing_key, public_pem
from jurisfed.errors import InvalidInput
from jurisfed.round_contract import BaseCheckpoint, RoundContract, SignedContract, contract_for, sign_contract
from jurisfed.round_plan import Cohort, Compression, Deadlines, HopCompression, Quorum, RoundPlan, applies_dp
from jurisfed.rounds import TrainingConfig

log = logging.getLogger("jurisfed.global")

CONTRACT_KEY_NAME = "contract.key"
# Without a plan file, regionals and silos get this share of the round's deadline.
CONFIG_PLAN_LOWER_TIERS_SHARE = 0.95


def check_runnable(plan: RoundPlan, *, has_probe_set: bool) -> None:
    """InvalidInput naming the plan key this federation cannot carry out yet."""
    problems = []
    if applies_dp(plan.aggregation.jurisdictions_rule()):
        problems.append(
            f"aggregation.jurisdictions: {plan.aggregation.jurisdictions!r} adds DP noise at the global, "
            "which keeps no privacy ledger; central DP is applied by the regionals (aggregation.silos)"
        )
    gates = plan.gates
    needs_probe = [
        name
        for name in ("max_accuracy_drop", "min_accuracy", "max_loss_increase")
        if getattr(gates, name) is not None
    ]
    if needs_probe and not has_probe_set:
        problems.append(
            f"gates.{', gates.'.join(needs_probe)}: this global holds no probe set (probe_set in its "
            "configuration) to evaluate candidates on"
        )
    if problems:
        raise InvalidInput(f"round plan {plan.name} cannot run here: " + "; ".join(problems))


def plan_from_settings(
    *,
    rounds: int,
    round_deadline_s: float,
    min_jurisdictions: int,
    training: TrainingConfig,
    compression: str,
    jurisdictions: tuple[str, ...],
) -> RoundPlan:
    """The plan a configuration file without a `plan` key describes (named "config")."""
    lower = round_deadline_s * CONFIG_PLAN_LOWER_TIERS_SHARE
    return RoundPlan(
        name="config",
        rounds=rounds,
        cohort=Cohort(jurisdictions=tuple(sorted(jurisdictions))),
        quorum=Quorum(min_jurisdictions=min_jurisdictions),
        deadlines=Deadlines(silo_s=lower, regional_s=lower, global_s=round_deadline_s),
        training=training,
        compression=Compression(
            silo_to_regional=HopCompression("raw"),
            regional_to_global=HopCompression("int8" if compression == "int8" else "raw"),
        ),
    )


@dataclass(frozen=True)
class ContractIssuer:
    """Signs every round's contract with the global's Ed25519 contract key."""

    key: Ed25519PrivateKey

    @classmethod
    def open(cls, state_dir: Path, key_path: Path | None) -> ContractIssuer:
        """The key at `key_path`, or the one in `state_dir` (made on first start, 0600, with a .pub)."""
        if key_path is None:
            key_path = state_dir / CONTRACT_KEY_NAME
            state_dir.mkdir(parents=True, exist_ok=True)
            if not key_path.exists():
                create_signing_key(key_path)
                log.info("contract signing key created", extra={"path": str(key_path)})
        return cls(load_signing_key(key_path))

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.key.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())

    def issue(self, plan: RoundPlan, number: int, base: BaseCheckpoint) -> SignedContract:
        return sign_contract(contract_for(plan, number, base=base, issued_at=datetime.now(UTC)), self.key)

    def resign(self, contract: RoundContract) -> SignedContract:
        """The signature of a contract issued before a restart (Ed25519 signs deterministically)."""
        return sign_contract(contract, self.key)
