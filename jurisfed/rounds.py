"""What a round asks of its participants, as the domain sees it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from jurisfed.config import setting
from jurisfed.policy.model import PrivacySpend
from jurisfed.tensors import ModelSpec


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = setting("local epochs each silo trains per round", 2)
    batch_size: int = setting("local mini-batch size", 16)
    learning_rate: float = setting("local SGD learning rate", 0.1)
    proximal_mu: float = setting("FedProx proximal term mu (0 disables it)", 0.0)


class RoundState(enum.Enum):
    WAITING = "waiting"
    OPEN = "open"
    FINISHED = "finished"


@dataclass(frozen=True)
class ExclusionNotice:
    """What a silo left out of the open round is told: the reason code and a sentence."""

    code: str  # a jurisfed.eligibility.ExclusionReason value
    reason: str


@dataclass(frozen=True)
class RoundAnnouncement:
    state: RoundState
    round: int
    model_spec: ModelSpec | None
    training: TrainingConfig | None
    deadline_in_s: float
    base_model_sha256: str
    # Where the global aggregator is hosted, so a regional can check its policy before the round.
    global_location: str = ""
    # W3C trace context of the round's span (empty: not traced).
    traceparent: str = ""
    # The signed round contract (jurisfed.round_contract): canonical JSON and the global's
    # Ed25519 signature over it; empty on WAITING and FINISHED announcements.
    contract: bytes = b""
    contract_signature: bytes = b""
    # To a silo excluded from round `round` (WAITING announcements only).
    exclusion: ExclusionNotice | None = None


# How regionals encode aggregates under a global configured without a plan file (its
# `upstream_compression`); a round plan names any codec (jurisfed.round_plan.HopCompression).
UPSTREAM_COMPRESSIONS = ("int8", "none")

# Largest example count one silo may claim; beyond this a claim is treated as hostile.
MAX_EXAMPLES_PER_SILO = 1_000_000_000
MAX_IDEMPOTENCY_KEY_CHARS = 128


@dataclass(frozen=True)
class UpdateHeader:
    """What a silo declares before streaming its weight delta."""

    round: int
    example_count: int
    idempotency_key: str
    train_loss: float
    # The silo's signature over (round, its identity, digest of the chunks); see auth.signatures.
    content_signature: bytes = b""


@dataclass(frozen=True)
class AggregateHeader:
    """What a regional declares before streaming its jurisdiction's aggregate delta."""

    round: int
    cohort_size: int
    example_total: int
    idempotency_key: str
    # Tensors the exporting jurisdiction's policy keeps local; the aggregate carries the rest.
    withheld_tensors: tuple[str, ...] = ()
    # Attestation: the hash of the residency policy the regional enforced on this aggregate.
    policy_sha256: str = ""
    # The kind of the round contract's regional_to_global codec (CodecKind value, e.g. top-k-int8).
    compression: str = "int8"
    # The regional's signature over (round, its identity, digest of the chunks).
    content_signature: bytes = b""
    # The DP its ledger has spent with this release; None: the regional added no noise.
    privacy: PrivacySpend | None = None


@dataclass(frozen=True)
class Refusal:
    """A jurisdiction that stayed out of a round because a policy refused, and the rule."""

    round: int
    jurisdiction: str
    rule_id: str
    reason: str


@dataclass(frozen=True)
class Rejection:
    sender: str
    code: str
    reason: str


@dataclass(frozen=True)
class RoundSummary:
    round: int
    outcome: str
    participants: tuple[str, ...]
    example_total: int
    bytes_received: int
    float32_bytes_equivalent: int
    wall_time_s: float
    model_sha256: str
    rejections: tuple[Rejection, ...] = ()


@dataclass(frozen=True)
class Contribution:
    """One jurisdiction's aggregate as the global aggregator received it."""

    round: int
    jurisdiction: str
    cohort_size: int
    example_total: int
    bytes_received: int
    float32_bytes_equivalent: int


# --- what `round status` and `round history` report ----------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """An acceptance gate (threshold and passed set) or a plain metric (both None) of one round."""

    name: str
    value: float | None  # None where it could not be computed (NaN)
    sentence: str
    threshold: float | None = None
    passed: bool | None = None

    @property
    def is_gate(self) -> bool:
        return self.passed is not None


@dataclass(frozen=True)
class LeftOutEntry:
    """A participant excluded before a round (`dropout` False) or one that dropped out of it."""

    round: int
    participant: str
    dropout: bool
    code: str  # a jurisfed.eligibility.ExclusionReason or DropoutReason value
    detail: str


@dataclass(frozen=True)
class ParticipantEntry:
    """One contribution a round counted."""

    participant: str
    example_count: int
    cohort_size: int
    bytes_received: int
    float32_bytes: int
    content_sha256: str
    withheld: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanProgress:
    name: str
    first_round: int
    last_round: int
    status: str  # running, finished or aborted
    reason: str = ""


@dataclass(frozen=True)
class RoundEntry:
    """One round as a tier recorded it."""

    round: int
    state: str  # open, closing, committed, aborted, gate_failed, rolled_back
    reason: str
    contract_sha256: str
    base_sha256: str
    model_sha256: str
    opened_at: float  # seconds since the Unix epoch
    closed_at: float | None
    participants: tuple[ParticipantEntry, ...] = ()
    refusals: tuple[Rejection, ...] = ()
    checks: tuple[CheckResult, ...] = ()
    left_out: tuple[LeftOutEntry, ...] = ()


@dataclass(frozen=True)
class RollbackEntry:
    from_version: int | None
    to_version: int
    reason: str
    rolled_back_at: float


@dataclass(frozen=True)
class RoundHistory:
    rounds: tuple[RoundEntry, ...]
    plans: tuple[PlanProgress, ...]
    rollbacks: tuple[RollbackEntry, ...]
    head_version: int | None
    head_sha256: str
