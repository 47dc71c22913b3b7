"""The one bridge between wire messages (jurisfed.wire.v1) and domain types.

`<thing>_to_proto` builds the message a tier sends. `<thing>_from_proto` reads what a peer
sent and raises InvalidInput, naming the message and field, when it breaks the contract.
Tensor values themselves travel through `jurisfed.wire.chunks`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from jurisfed.auth.signatures import MAX_SIGNATURE_BYTES
from jurisfed.compression.codec import CodecKind
from jurisfed.config import config_from_json
from jurisfed.eligibility import DropoutReason, ExclusionReason
from jurisfed.errors import InvalidInput
from jurisfed.policy.canonical import canonical_json
from jurisfed.policy.model import PrivacySpend
from jurisfed.round_plan import RoundPlan
from jurisfed.rounds import (
    MAX_EXAMPLES_PER_SILO,
    MAX_IDEMPOTENCY_KEY_CHARS,
    AggregateHeader,
    CheckResult,
    Contribution,
    ExclusionNotice,
    LeftOutEntry,
    ParticipantEntry,
    PlanProgress,
    Refusal,
    Rejection,
    RollbackEntry,
    RoundAnnouncement,
    RoundEntry,
    RoundHistory,
    RoundState,
    RoundSummary,
    TrainingConfig,
    UpdateHeader,
)
from jurisfed.tensors import ModelSpec, TensorSpec
from jurisfed.wire.v1 import global_pb2, regional_pb2, rounds_pb2, tensors_pb2

_DTYPES = {"float32": tensors_pb2.DTYPE_FLOAT32}
_DTYPE_NAMES: dict[int, str] = {value: name for name, value in tensors_pb2.DType.items()}
_ROUND_STATES = {
    RoundState.WAITING: rounds_pb2.ROUND_STATE_WAITING,
    RoundState.OPEN: rounds_pb2.ROUND_STATE_OPEN,
    RoundState.FINISHED: rounds_pb2.ROUND_STATE_FINISHED,
}
_ROUND_STATES_FROM_PROTO: dict[int, RoundState] = {wire: state for state, wire in _ROUND_STATES.items()}
_ROUND_STATE_NAMES: dict[int, str] = {value: name for name, value in rounds_pb2.RoundState.items()}
# The offset of a chunk is an int64: no tensor may hold more values than it can address.
_MAX_TENSOR_VALUES = 2**63 - 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_POLICY_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,62}")
_MAX_WITHHELD = 1024
_MAX_TRACEPARENT = 128
# A round contract is a few kilobytes of canonical JSON; a round plan sent by an operator too.
MAX_CONTRACT_BYTES = 64 * 1024
MAX_PLAN_BYTES = 64 * 1024
_MAX_CONTRACT_SIGNATURE_BYTES = 128
_EXCLUSION_CODES = frozenset(reason.value for reason in ExclusionReason)
_DROPOUT_CODES = frozenset(reason.value for reason in DropoutReason)
_CODEC_KINDS = tuple(kind.value for kind in CodecKind)


# --- Model description -------------------------------------------------------------------


def tensor_spec_to_proto(spec: TensorSpec) -> tensors_pb2.TensorSpec:
    if spec.dtype not in _DTYPES:
        raise ValueError(f"tensor {spec.name!r} has dtype {spec.dtype}; the wire carries {sorted(_DTYPES)}")
    return tensors_pb2.TensorSpec(name=spec.name, dtype=_DTYPES[spec.dtype], shape=spec.shape)


def tensor_spec_from_proto(message: tensors_pb2.TensorSpec) -> TensorSpec:
    if not message.name:
        raise InvalidInput("model spec: a tensor has an empty name")
    where = f"model spec: tensor {message.name!r}"
    if message.dtype != tensors_pb2.DTYPE_FLOAT32:
        name = _DTYPE_NAMES.get(message.dtype, str(message.dtype))
        raise InvalidInput(f"{where} has dtype {name}, expected DTYPE_FLOAT32")
    shape = tuple(message.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"{where} has shape {list(shape)}; dimensions must be 0 or more")
    if math.prod(shape) > _MAX_TENSOR_VALUES:
        raise InvalidInput(f"{where} has shape {list(shape)}, more values than a chunk offset can address")
    return TensorSpec(message.name, shape, "float32")


def model_spec_to_proto(spec: ModelSpec) -> tensors_pb2.ModelSpec:
    return tensors_pb2.ModelSpec(
        architecture=spec.architecture, tensors=[tensor_spec_to_proto(t) for t in spec.tensors]
    )


def model_spec_from_proto(message: tensors_pb2.ModelSpec) -> ModelSpec:
    tensors = tuple(tensor_spec_from_proto(t) for t in message.tensors)
    repeated = sorted(name for name, count in Counter(t.name for t in tensors).items() if count > 1)
    if repeated:
        raise InvalidInput(f"model spec: tensor names must be unique; repeated: {repeated}")
    return ModelSpec(message.architecture, tensors)


# --- Rounds ------------------------------------------------------------------------------


def training_config_to_proto(config: TrainingConfig) -> rounds_pb2.TrainingConfig:
    return rounds_pb2.TrainingConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        proximal_mu=config.proximal_mu,
    )


def training_config_from_proto(message: rounds_pb2.TrainingConfig) -> TrainingConfig:
    where = "training config"
    epochs = _at_least(where, "epochs", message.epochs, 1)
    batch_size = _at_least(where, "batch_size", message.batch_size, 1)
    learning_rate = _from_float32(message.learning_rate)
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidInput(f"{where}: learning_rate must be a finite number above 0, got {learning_rate}")
    proximal_mu = _finite(where, "proximal_mu", _from_float32(message.proximal_mu), minimum=0.0)
    return TrainingConfig(epochs, batch_size, learning_rate, proximal_mu)


def round_state_to_proto(state: RoundState) -> rounds_pb2.RoundState.ValueType:
    return _ROUND_STATES[state]


def round_state_from_proto(value: int) -> RoundState:
    state = _ROUND_STATES_FROM_PROTO.get(value)
    if state is None:
        name = _ROUND_STATE_NAMES.get(value, f"{value} (unknown)")
        raise InvalidInput(f"round state {name} is not one of WAITING, OPEN, FINISHED")
    return state


def round_announcement_to_proto(announcement: RoundAnnouncement) -> rounds_pb2.RoundAnnouncement:
    message = rounds_pb2.RoundAnnouncement(
        state=round_state_to_proto(announcement.state),
        round=announcement.round,
        deadline_in_s=announcement.deadline_in_s,
        base_model_sha256=announcement.base_model_sha256,
        global_location=announcement.global_location,
        traceparent=announcement.traceparent,
        contract=announcement.contract,
        contract_signature=announcement.contract_signature,
    )
    if announcement.exclusion is not None:
        message.exclusion.code = announcement.exclusion.code
        message.exclusion.reason = announcement.exclusion.reason
    if announcement.model_spec is not None:
        message.model_spec.CopyFrom(model_spec_to_proto(announcement.model_spec))
    if announcement.training is not None:
        message.training.CopyFrom(training_config_to_proto(announcement.training))
    return message


def round_announcement_from_proto(message: rounds_pb2.RoundAnnouncement) -> RoundAnnouncement:
    """An OPEN round carries its model spec, training config and base model hash; others none."""
    where = "round announcement"
    state = round_state_from_proto(message.state)
    # Negative once the deadline has passed, which is not a malformed announcement.
    deadline_in_s = _finite(where, "deadline_in_s", message.deadline_in_s)
    has_spec, has_training = message.HasField("model_spec"), message.HasField("training")
    if state is not RoundState.OPEN:
        if has_spec or has_training or message.contract or message.contract_signature:
            raise InvalidInput(f"{where}: a {state.value} round carries no model_spec, training or contract")
        round_number = _at_least(where, "round", message.round, 0)
        exclusion = None
        if message.HasField("exclusion"):
            if state is not RoundState.WAITING:
                raise InvalidInput(f"{where}: only a waiting answer tells a silo why it is excluded")
            exclusion = _exclusion(where, message.exclusion)
        return RoundAnnouncement(
            state, round_number, None, None, deadline_in_s, message.base_model_sha256, exclusion=exclusion
        )
    if message.HasField("exclusion"):
        raise InvalidInput(f"{where}: an open round is not an exclusion")
    if len(message.contract) > MAX_CONTRACT_BYTES or len(message.contract_signature) > (
        _MAX_CONTRACT_SIGNATURE_BYTES
    ):
        raise InvalidInput(
            f"{where}: the contract may take {MAX_CONTRACT_BYTES} bytes and its signature "
            f"{_MAX_CONTRACT_SIGNATURE_BYTES}; got {len(message.contract)} and "
            f"{len(message.contract_signature)}"
        )
    if not (has_spec and has_training):
        raise InvalidInput(f"{where}: an open round must carry model_spec and training")
    if not _SHA256_HEX.fullmatch(message.base_model_sha256):
        raise InvalidInput(
            f"{where}: base_model_sha256 must be 64 lowercase hex digits, "
            f"got {message.base_model_sha256[:80]!r}"
        )
    return RoundAnnouncement(
        state=state,
        round=_at_least(where, "round", message.round, 1),
        model_spec=model_spec_from_proto(message.model_spec),
        training=training_config_from_proto(message.training),
        deadline_in_s=deadline_in_s,
        base_model_sha256=message.base_model_sha256,
        global_location=_location(where, message.global_location),
        traceparent=_traceparent(where, message.traceparent),
        contract=bytes(message.contract),
        contract_signature=bytes(message.contract_signature),
    )


def _exclusion(where: str, message: rounds_pb2.Exclusion) -> ExclusionNotice:
    if message.code not in _EXCLUSION_CODES:
        raise InvalidInput(
            f"{where}: exclusion code must be one of {', '.join(sorted(_EXCLUSION_CODES))}, "
            f"got {message.code[:40]!r}"
        )
    return ExclusionNotice(message.code, message.reason[:1000])


# --- Contributions -----------------------------------------------------------------------


def update_header_to_proto(header: UpdateHeader) -> regional_pb2.UpdateHeader:
    return regional_pb2.UpdateHeader(
        round=header.round,
        example_count=header.example_count,
        idempotency_key=header.idempotency_key,
        train_loss=header.train_loss,
        content_signature=header.content_signature,
    )


def update_header_from_proto(message: regional_pb2.UpdateHeader) -> UpdateHeader:
    where = "update header"
    return UpdateHeader(
        round=_at_least(where, "round", message.round, 1),
        example_count=_between(where, "example_count", message.example_count, 1, MAX_EXAMPLES_PER_SILO),
        idempotency_key=_idempotency_key(where, message.idempotency_key),
        train_loss=_finite(where, "train_loss", message.train_loss),
        content_signature=_signature(where, message.content_signature),
    )


def aggregate_header_to_proto(header: AggregateHeader) -> global_pb2.AggregateHeader:
    return global_pb2.AggregateHeader(
        round=header.round,
        cohort_size=header.cohort_size,
        example_total=header.example_total,
        idempotency_key=header.idempotency_key,
        withheld_tensors=header.withheld_tensors,
        policy_sha256=header.policy_sha256,
        compression=header.compression,
        content_signature=header.content_signature,
        dp_epsilon=header.privacy.epsilon if header.privacy is not None else 0.0,
        dp_delta=header.privacy.delta if header.privacy is not None else 0.0,
        dp_period_days=header.privacy.period_days if header.privacy is not None else 0,
    )


def aggregate_header_from_proto(message: global_pb2.AggregateHeader) -> AggregateHeader:
    where = "aggregate header"
    cohort_size = _at_least(where, "cohort_size", message.cohort_size, 1)
    return AggregateHeader(
        round=_at_least(where, "round", message.round, 1),
        cohort_size=cohort_size,
        example_total=_example_total(where, message.example_total, cohort_size),
        idempotency_key=_idempotency_key(where, message.idempotency_key),
        withheld_tensors=_withheld(where, message.withheld_tensors),
        policy_sha256=_policy_sha256(where, message.policy_sha256),
        compression=_codec_kind(where, "compression", message.compression),
        content_signature=_signature(where, message.content_signature),
        privacy=_privacy_spend(where, message.dp_epsilon, message.dp_delta, message.dp_period_days),
    )


def refusal_to_proto(refusal: Refusal) -> global_pb2.Refusal:
    return global_pb2.Refusal(
        round=refusal.round, jurisdiction=refusal.jurisdiction, rule_id=refusal.rule_id, reason=refusal.reason
    )


def refusal_from_proto(message: global_pb2.Refusal) -> Refusal:
    return Refusal(
        round=_at_least("refusal", "round", message.round, 1),
        jurisdiction=message.jurisdiction,
        rule_id=message.rule_id,
        reason=message.reason,
    )


def contribution_to_proto(contribution: Contribution) -> global_pb2.Contribution:
    return global_pb2.Contribution(
        round=contribution.round,
        jurisdiction=contribution.jurisdiction,
        cohort_size=contribution.cohort_size,
        example_total=contribution.example_total,
        bytes_received=contribution.bytes_received,
        float32_bytes_equivalent=contribution.float32_bytes_equivalent,
    )


def contribution_from_proto(message: global_pb2.Contribution) -> Contribution:
    where = "contribution"
    if not message.jurisdiction:
        raise InvalidInput(f"{where}: jurisdiction is empty")
    cohort_size = _at_least(where, "cohort_size", message.cohort_size, 1)
    return Contribution(
        round=_at_least(where, "round", message.round, 1),
        jurisdiction=message.jurisdiction,
        cohort_size=cohort_size,
        example_total=_example_total(where, message.example_total, cohort_size),
        bytes_received=_at_least(where, "bytes_received", message.bytes_received, 0),
        float32_bytes_equivalent=_at_least(
            where, "float32_bytes_equivalent", message.float32_bytes_equivalent, 0
        ),
    )


# --- Round reports -----------------------------------------------------------------------


def rejection_to_proto(rejection: Rejection) -> rounds_pb2.Rejection:
    return rounds_pb2.Rejection(sender=rejection.sender, code=rejection.code, reason=rejection.reason)


def rejection_from_proto(message: rounds_pb2.Rejection) -> Rejection:
    return Rejection(sender=message.sender, code=message.code, reason=message.reason)


def round_summary_to_proto(summary: RoundSummary) -> rounds_pb2.RoundSummary:
    return rounds_pb2.RoundSummary(
        round=summary.round,
        outcome=summary.outcome,
        participants=summary.participants,
        example_total=summary.example_total,
        bytes_received=summary.bytes_received,
        float32_bytes_equivalent=summary.float32_bytes_equivalent,
        wall_time_s=summary.wall_time_s,
        model_sha256=summary.model_sha256,
        rejections=[rejection_to_proto(r) for r in summary.rejections],
    )


def round_summary_from_proto(message: rounds_pb2.RoundSummary) -> RoundSummary:
    where = "round summary"
    return RoundSummary(
        round=_at_least(where, "round", message.round, 1),
        outcome=message.outcome,
        participants=tuple(message.participants),
        example_total=_at_least(where, "example_total", message.example_total, 0),
        bytes_received=_at_least(where, "bytes_received", message.bytes_received, 0),
        float32_bytes_equivalent=_at_least(
            where, "float32_bytes_equivalent", message.float32_bytes_equivalent, 0
        ),
        wall_time_s=_finite(where, "wall_time_s", message.wall_time_s, minimum=0.0),
        model_sha256=message.model_sha256,
        rejections=tuple(rejection_from_proto(r) for r in message.rejections),
    )


# --- Round plans and history ------------------------------------------------------------


def round_plan_to_json(plan: RoundPlan) -> bytes:
    """The plan as canonical JSON, every key written out: what `round start` sends the global."""
    return canonical_json(_plain(plan))


def round_plan_from_json(data: bytes) -> RoundPlan:
    """The plan an operator sent; InvalidInput naming the key when it is not a valid plan."""
    if len(data) > MAX_PLAN_BYTES:
        raise InvalidInput(f"round plan: {len(data)} bytes, at most {MAX_PLAN_BYTES}")
    return config_from_json(RoundPlan, data, what="round plan")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def plan_progress_to_proto(plan: PlanProgress) -> global_pb2.PlanRecord:
    return global_pb2.PlanRecord(
        name=plan.name,
        first_round=plan.first_round,
        last_round=plan.last_round,
        status=plan.status,
        reason=plan.reason,
    )


def plan_progress_from_proto(message: global_pb2.PlanRecord) -> PlanProgress:
    where = "plan"
    first = _at_least(where, "first_round", message.first_round, 1)
    return PlanProgress(
        message.name,
        first,
        _at_least(where, "last_round", message.last_round, first),
        message.status,
        message.reason,
    )


def left_out_to_proto(entry: LeftOutEntry) -> rounds_pb2.LeftOut:
    return rounds_pb2.LeftOut(
        round=entry.round,
        participant=entry.participant,
        dropout=entry.dropout,
        code=entry.code,
        detail=entry.detail,
    )


def left_out_from_proto(message: rounds_pb2.LeftOut) -> LeftOutEntry:
    where = "left out"
    codes = _DROPOUT_CODES if message.dropout else _EXCLUSION_CODES
    if message.code not in codes:
        raise InvalidInput(
            f"{where}: {message.code[:40]!r} is not a reason code ({', '.join(sorted(codes))})"
        )
    return LeftOutEntry(
        _at_least(where, "round", message.round, 1),
        message.participant,
        message.dropout,
        message.code,
        message.detail,
    )


def check_to_proto(check: CheckResult) -> rounds_pb2.Check:
    message = rounds_pb2.Check(name=check.name, sentence=check.sentence)
    if check.value is not None:
        message.value = check.value
    if check.threshold is not None:
        message.threshold = check.threshold
    if check.passed is not None:
        message.passed = check.passed
    return message


def check_from_proto(message: rounds_pb2.Check) -> CheckResult:
    return CheckResult(
        name=message.name,
        value=message.value if message.HasField("value") else None,
        sentence=message.sentence,
        threshold=message.threshold if message.HasField("threshold") else None,
        passed=message.passed if message.HasField("passed") else None,
    )


def round_entry_to_proto(entry: RoundEntry) -> global_pb2.RoundRecord:
    return global_pb2.RoundRecord(
        round=entry.round,
        state=entry.state,
        reason=entry.reason,
        contract_sha256=entry.contract_sha256,
        base_sha256=entry.base_sha256,
        model_sha256=entry.model_sha256,
        opened_at=entry.opened_at,
        closed_at=entry.closed_at or 0.0,
        participants=[
            global_pb2.RoundParticipant(
                participant=p.participant,
                example_count=p.example_count,
                cohort_size=p.cohort_size,
                bytes_received=p.bytes_received,
                float32_bytes=p.float32_bytes,
                content_sha256=p.content_sha256,
                withheld=p.withheld,
            )
            for p in entry.participants
        ],
        refusals=[
            global_pb2.RoundRefusal(participant=r.sender, code=r.code, detail=r.reason)
            for r in entry.refusals
        ],
        checks=[check_to_proto(c) for c in entry.checks],
        left_out=[left_out_to_proto(e) for e in entry.left_out],
    )


def round_entry_from_proto(message: global_pb2.RoundRecord) -> RoundEntry:
    where = "round record"
    return RoundEntry(
        round=_at_least(where, "round", message.round, 1),
        state=message.state,
        reason=message.reason,
        contract_sha256=message.contract_sha256,
        base_sha256=message.base_sha256,
        model_sha256=message.model_sha256,
        opened_at=_finite(where, "opened_at", message.opened_at, minimum=0.0),
        closed_at=_finite(where, "closed_at", message.closed_at, minimum=0.0) or None,
        participants=tuple(
            ParticipantEntry(
                p.participant,
                _at_least(where, "example_count", p.example_count, 0),
                _at_least(where, "cohort_size", p.cohort_size, 0),
                _at_least(where, "bytes_received", p.bytes_received, 0),
                _at_least(where, "float32_bytes", p.float32_bytes, 0),
                p.content_sha256,
                tuple(p.withheld),
            )
            for p in message.participants
        ),
        refusals=tuple(Rejection(r.participant, r.code, r.detail) for r in message.refusals),
        checks=tuple(check_from_proto(c) for c in message.checks),
        left_out=tuple(left_out_from_proto(e) for e in message.left_out),
    )


def round_history_to_proto(history: RoundHistory) -> global_pb2.RoundHistory:
    return global_pb2.RoundHistory(
        rounds=[round_entry_to_proto(r) for r in history.rounds],
        plans=[plan_progress_to_proto(p) for p in history.plans],
        rollbacks=[
            global_pb2.RollbackRecord(
                from_version=-1 if r.from_version is None else r.from_version,
                to_version=r.to_version,
                reason=r.reason,
                rolled_back_at=r.rolled_back_at,
            )
            for r in history.rollbacks
        ],
        head_version=-1 if history.head_version is None else history.head_version,
        head_sha256=history.head_sha256,
    )


def round_history_from_proto(message: global_pb2.RoundHistory) -> RoundHistory:
    where = "round history"
    return RoundHistory(
        rounds=tuple(round_entry_from_proto(r) for r in message.rounds),
        plans=tuple(plan_progress_from_proto(p) for p in message.plans),
        rollbacks=tuple(
            RollbackEntry(
                None if r.from_version < 0 else r.from_version,
                _at_least(where, "to_version", r.to_version, 0),
                r.reason,
                _finite(where, "rolled_back_at", r.rolled_back_at, minimum=0.0),
            )
            for r in message.rollbacks
        ),
        head_version=None if message.head_version < 0 else message.head_version,
        head_sha256=message.head_sha256,
    )


# --- Checks ------------------------------------------------------------------------------


def _at_least(where: str, field: str, value: int, minimum: int) -> int:
    if value < minimum:
        raise InvalidInput(f"{where}: {field} must be at least {minimum}, got {value}")
    return value


def _between(where: str, field: str, value: int, minimum: int, maximum: int) -> int:
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{where}: {field} must be between {minimum} and {maximum}, got {value}")
    return value


def _example_total(where: str, value: int, cohort_size: int) -> int:
    """Each silo in the cohort may claim at most MAX_EXAMPLES_PER_SILO."""
    return _between(where, "example_total", value, 1, MAX_EXAMPLES_PER_SILO * cohort_size)


def _finite(where: str, field: str, value: float, *, minimum: float = -math.inf) -> float:
    if not (math.isfinite(value) and value >= minimum):
        bound = "" if minimum == -math.inf else f" of at least {minimum}"
        raise InvalidInput(f"{where}: {field} must be a finite number{bound}, got {value}")
    return value


def _from_float32(value: float) -> float:
    """The shortest decimal a float32 field stands for: 0.01 reads back as 0.01, not 0.00999999977."""
    return float(str(np.float32(value)))


def _location(where: str, location: str) -> str:
    """A hosting location such as 'ch-zurich', or '' where the announcer names none."""
    if location and not _LOCATION.fullmatch(location):
        raise InvalidInput(
            f"{where}: global_location must name a hosting location such as 'ch-zurich', "
            f"got {location[:80]!r}"
        )
    return location


def _codec_kind(where: str, field: str, value: str) -> str:
    if value not in _CODEC_KINDS:
        raise InvalidInput(f"{where}: {field} must be one of {', '.join(_CODEC_KINDS)}, got {value[:40]!r}")
    return value


def _withheld(where: str, names: Iterable[str]) -> tuple[str, ...]:
    withheld = tuple(names)
    if len(withheld) > _MAX_WITHHELD or len(set(withheld)) != len(withheld):
        raise InvalidInput(f"{where}: withheld_tensors must name at most {_MAX_WITHHELD} distinct tensors")
    return withheld


def _policy_sha256(where: str, value: str) -> str:
    if not _POLICY_SHA256.fullmatch(value):
        raise InvalidInput(
            f"{where}: policy_sha256 must attest the enforced policy as 'sha256:' and 64 hex digits, "
            f"got {value[:80]!r}"
        )
    return value


def _privacy_spend(where: str, epsilon: float, delta: float, period_days: int) -> PrivacySpend | None:
    """None when all three are zero (no noise added); otherwise all three must make sense."""
    if epsilon == 0.0 and delta == 0.0 and period_days == 0:
        return None
    if not (math.isfinite(epsilon) and epsilon > 0.0 and 0.0 < delta < 1.0 and period_days >= 1):
        raise InvalidInput(
            f"{where}: dp_epsilon ({epsilon}), dp_delta ({delta}) and dp_period_days ({period_days}) must "
            "all be zero (no noise added) or a positive epsilon, a delta between 0 and 1 and at least one day"
        )
    return PrivacySpend(epsilon, delta, period_days)


def _signature(where: str, signature: bytes) -> bytes:
    """Bounded here; whether it verifies is checked once the content has streamed in."""
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise InvalidInput(
            f"{where}: content_signature has {len(signature)} bytes, at most {MAX_SIGNATURE_BYTES}"
        )
    return bytes(signature)


def _traceparent(where: str, value: str) -> str:
    if len(value) > _MAX_TRACEPARENT or not value.isascii():
        raise InvalidInput(
            f"{where}: traceparent must be a W3C trace context of at most {_MAX_TRACEPARENT} ASCII characters"
        )
    return value


def _idempotency_key(where: str, key: str) -> str:
    if not key:
        raise InvalidInput(f"{where}: idempotency_key is empty")
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(
            f"{where}: idempotency_key has {len(key)} characters, at most {MAX_IDEMPOTENCY_KEY_CHARS} allowed"
        )
    for position, char in enumerate(key):
        if not (char.isascii() and char.isprintable()):
            raise InvalidInput(
                f"{where}: idempotency_key must be printable ASCII; character {position} is {char!r}"
            )
    return key
