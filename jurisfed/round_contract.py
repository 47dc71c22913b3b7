"""The round contract: what one round asks of every tier, versioned and signed by the global.

`contract_for(plan, round, base=...)` derives it from the round plan: the plan's sections with
every rule, codec and number in one canonical spelling, plus the round number, the checkpoint
the round starts from (version, SHA-256 of its weights, architecture) and the time it was
issued. Its canonical form is canonical JSON (jurisfed.policy.canonical: keys sorted, no
spaces, 3.0 written 3), so equal contracts have equal bytes and equal SHA-256 on every
platform; a plan spelt differently (other key order, `mean` vs its defaults written out) gives
the same contract.

The global signs the canonical bytes, prefixed by a context string so the signature can mean
nothing else, with its Ed25519 key (jurisfed.audit.keys makes and loads such keys). Every tier
calls `verify_contract` before acting: a bad signature is Unauthenticated, and bytes that are
not exactly the canonical form of a valid contract are refused, so no two byte strings verify
as the same contract.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jurisfed.audit.keys import key_id
from jurisfed.config import config_from_json, setting
from jurisfed.eligibility import EligibilityRules
from jurisfed.errors import InvalidInput, Unauthenticated, WrongState
from jurisfed.gates import GateConfig
from jurisfed.policy.canonical import canonical_json
from jurisfed.round_plan import (
    Aggregation,
    Cohort,
    Compression,
    Deadlines,
    Privacy,
    Quorum,
    RoundPlan,
    check_sections,
)
from jurisfed.rounds import RoundAnnouncement, TrainingConfig

CONTRACT_VERSION = 1
# Domain separation: a contract signature can never be replayed as another signed message.
CONTRACT_CONTEXT = b"jurisfed/round-contract/v1\x00"
ED25519_SIGNATURE_BYTES = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class BaseCheckpoint:
    """The committed checkpoint a round starts from."""

    version: int = setting("checkpoint version")
    sha256: str = setting("SHA-256 of its weights (jurisfed.tensors.weights_sha256), its blob's name")
    architecture: str = setting("model architecture, e.g. mlp-64-256-128-10")

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"version must not be negative, got {self.version}")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.architecture:
            raise ValueError("architecture must be named")


@dataclass(frozen=True)
class RoundContract:
    contract_version: int = setting("version of the contract format")
    plan: str = setting("name of the round plan it derives from")
    round: int = setting("round number")
    issued_at: str = setting("when the global issued it, UTC, e.g. 2024-05-01T12:00:00Z")
    base: BaseCheckpoint = setting("the checkpoint the round starts from")
    cohort: Cohort = setting("who takes part")
    quorum: Quorum = setting("when the round may commit")
    deadlines: Deadlines = setting("when each tier closes the round")
    training: TrainingConfig = setting("local training every silo runs")
    aggregation: Aggregation = setting("the rule at each tier, canonically spelt")
    compression: Compression = setting("the encoding on each hop, every setting written out")
    privacy: Privacy = setting("differential privacy the round requires")
    gates: GateConfig = setting("what the candidate must pass before it commits")
    eligibility: EligibilityRules = setting("which silos may take part")

    def __post_init__(self) -> None:
        if self.contract_version != CONTRACT_VERSION:
            raise ValueError(
                f"contract_version {self.contract_version} is not {CONTRACT_VERSION}, "
                "the version this jurisfed reads"
            )
        if self.round < 1:
            raise ValueError(f"round must be at least 1, got {self.round}")
        try:
            datetime.strptime(self.issued_at, _TIME_FORMAT)
        except ValueError:
            raise ValueError(
                f"issued_at {self.issued_at!r} is not a UTC time like 2024-05-01T12:00:00Z"
            ) from None
        if (
            self.aggregation != self.aggregation.canonical()
            or self.compression != self.compression.canonical()
        ):
            raise ValueError("aggregation rules and codecs must be written in their canonical form")
        check_sections(self.cohort, self.quorum, self.training, self.aggregation, self.privacy)

    def canonical_json(self) -> bytes:
        """The bytes that are hashed and signed."""
        return canonical_json(_plain(self))

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical bytes, lowercase hex (what the tiers record per round)."""
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @classmethod
    def from_canonical_json(cls, data: bytes) -> RoundContract:
        """The contract whose canonical form is exactly `data`; InvalidInput otherwise."""
        contract = config_from_json(cls, data, what="round contract")
        if contract.canonical_json() != data:
            raise InvalidInput("round contract is not in canonical form (sorted keys, no spaces, every key)")
        return contract


@dataclass(frozen=True)
class SignedContract:
    contract: RoundContract
    signature: bytes  # Ed25519 over CONTRACT_CONTEXT + canonical bytes
    key_id: str  # jurisfed.audit.keys.key_id of the signing key

    @property
    def canonical(self) -> bytes:
        return self.contract.canonical_json()


def contract_for(
    plan: RoundPlan, round_number: int, *, base: BaseCheckpoint, issued_at: datetime
) -> RoundContract:
    """The contract of round `round_number` under `plan`, starting from checkpoint `base`."""
    if issued_at.tzinfo is None:
        raise InvalidInput("issued_at must carry a time zone")
    return RoundContract(
        contract_version=CONTRACT_VERSION,
        plan=plan.name,
        round=round_number,
        issued_at=issued_at.astimezone(UTC).strftime(_TIME_FORMAT),
        base=base,
        cohort=plan.cohort,
        quorum=plan.quorum,
        deadlines=plan.deadlines,
        training=plan.training,
        aggregation=plan.aggregation.canonical(),
        compression=plan.compression.canonical(),
        privacy=plan.privacy,
        gates=plan.gates,
        eligibility=plan.eligibility,
    )


def sign_contract(contract: RoundContract, key: Ed25519PrivateKey) -> SignedContract:
    signature = key.sign(CONTRACT_CONTEXT + contract.canonical_json())
    return SignedContract(contract, signature, key_id(key.public_key()))


def verify_contract(data: bytes, signature: bytes, public_key: Ed25519PublicKey) -> RoundContract:
    """The contract in `data` if `public_key` signed exactly these bytes; Unauthenticated otherwise."""
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise Unauthenticated(
            f"round contract signature is {len(signature)} bytes; an Ed25519 signature has "
            f"{ED25519_SIGNATURE_BYTES}: unsigned or mangled contracts are refused"
        )
    try:
        public_key.verify(signature, CONTRACT_CONTEXT + data)
    except InvalidSignature:
        raise Unauthenticated(
            "round contract signature does not verify: the contract was altered after signing, "
            f"or key {key_id(public_key)[:16]} did not sign it"
        ) from None
    return RoundContract.from_canonical_json(data)


def _plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, for canonical JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def verify_announced(
    announcement: RoundAnnouncement, public_key: Ed25519PublicKey, *, architecture: str
) -> RoundContract:
    """The signed contract behind an OPEN announcement, checked against what was announced.

    A silo calls this before it trains: the contract must be signed by the global's key and
    name this round, the announced training and the model `architecture` the round's spec
    describes. The base model is not compared: a regional whose policy keeps layers local
    hands its silos the global model with its own values of those layers (the regional checks
    the global's model against the contract). Unauthenticated for a missing or bad signature,
    WrongState when the announcement and its contract disagree (a relay changed something).
    """
    if not announcement.contract:
        raise Unauthenticated(f"round {announcement.round} carries no signed contract")
    contract = verify_contract(announcement.contract, announcement.contract_signature, public_key)
    mismatches = [
        what
        for what, holds in (
            ("round", contract.round == announcement.round),
            ("training", contract.training == announcement.training),
            ("architecture", contract.base.architecture == architecture),
        )
        if not holds
    ]
    if mismatches:
        raise WrongState(
            f"round {announcement.round} was announced with another {', '.join(mismatches)} than its "
            "signed contract says; refusing to train for it"
        )
    return contract
