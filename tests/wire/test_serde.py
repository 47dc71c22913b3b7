"""Wire messages <-> domain types: what survives the trip, and what a peer may not send."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from jurisfed.errors import InvalidInput
from jurisfed.gates import GateConfig
from jurisfed.policy.model import PrivacySpend
from jurisfed.round_plan import Cohort, RoundPlan
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
from jurisfed.wire import serde
from jurisfed.wire.v1 import global_pb2, regional_pb2, rounds_pb2, tensors_pb2

SPEC = ModelSpec(
    "mlp-4-3-2",
    (
        TensorSpec("hidden_1/kernel", (4, 3)),
        TensorSpec("hidden_1/bias", (3,)),
        TensorSpec("empty", (0, 3)),
        TensorSpec("scalar", ()),
    ),
)
TRAINING = TrainingConfig(epochs=2, batch_size=16, learning_rate=0.01, proximal_mu=0.001)
SHA = "ab" * 32
OPEN = RoundAnnouncement(RoundState.OPEN, 3, SPEC, TRAINING, 12.5, SHA)

M = TypeVar("M", bound=Message)


def changed(message: M, **fields: Any) -> M:
    """A copy of `message` with some fields replaced."""
    copy = type(message)()
    copy.CopyFrom(message)
    for field, value in fields.items():
        if isinstance(value, Message):
            getattr(copy, field).CopyFrom(value)
        else:
            setattr(copy, field, value)
    return copy


# --- Round trips -------------------------------------------------------------------------


def test_model_spec_round_trips_including_empty_and_scalar_tensors() -> None:
    assert serde.model_spec_from_proto(serde.model_spec_to_proto(SPEC)) == SPEC


def test_model_spec_goes_on_the_wire_with_the_float32_dtype() -> None:
    message = serde.model_spec_to_proto(SPEC)

    assert message.architecture == "mlp-4-3-2"
    assert [t.dtype for t in message.tensors] == [tensors_pb2.DTYPE_FLOAT32] * 4
    assert list(message.tensors[0].shape) == [4, 3]


@pytest.mark.parametrize("learning_rate", [0.1, 0.01, 0.001, 3e-4, 0.5])
def test_training_config_reads_back_the_decimals_that_were_sent(learning_rate: float) -> None:
    config = TrainingConfig(epochs=1, batch_size=32, learning_rate=learning_rate, proximal_mu=0.01)

    assert serde.training_config_from_proto(serde.training_config_to_proto(config)) == config


@given(
    learning_rate=st.floats(min_value=1e-30, max_value=1e30),
    proximal_mu=st.floats(min_value=0, max_value=1e30),
)
def test_training_config_survives_float32_on_the_wire(learning_rate: float, proximal_mu: float) -> None:
    config = TrainingConfig(epochs=1, batch_size=1, learning_rate=learning_rate, proximal_mu=proximal_mu)

    received = serde.training_config_from_proto(serde.training_config_to_proto(config))

    assert np.float32(received.learning_rate) == np.float32(learning_rate)
    assert np.float32(received.proximal_mu) == np.float32(proximal_mu)


@pytest.mark.parametrize("state", list(RoundState))
def test_every_round_state_round_trips(state: RoundState) -> None:
    assert serde.round_state_from_proto(serde.round_state_to_proto(state)) is state


@pytest.mark.parametrize(
    "announcement",
    [
        pytest.param(OPEN, id="open"),
        pytest.param(RoundAnnouncement(RoundState.WAITING, 0, None, None, 0.0, ""), id="waiting"),
        pytest.param(RoundAnnouncement(RoundState.FINISHED, 7, None, None, 0.0, ""), id="finished"),
        pytest.param(RoundAnnouncement(RoundState.OPEN, 3, SPEC, TRAINING, -0.25, SHA), id="deadline-passed"),
        pytest.param(
            RoundAnnouncement(
                RoundState.OPEN,
                3,
                SPEC,
                TRAINING,
                9.5,
                SHA,
                contract=b'{"round":3}',
                contract_signature=bytes(64),
            ),
            id="with-contract",
        ),
        pytest.param(
            RoundAnnouncement(
                RoundState.WAITING,
                4,
                None,
                None,
                0.0,
                "",
                exclusion=ExclusionNotice("stale", "fetch the model"),
            ),
            id="excluded",
        ),
    ],
)
def test_round_announcement_round_trips(announcement: RoundAnnouncement) -> None:
    message = serde.round_announcement_to_proto(announcement)

    assert serde.round_announcement_from_proto(message) == announcement
    assert message.HasField("model_spec") == (announcement.state is RoundState.OPEN)


@given(
    round_number=st.integers(1, 2**62),
    example_count=st.integers(1, MAX_EXAMPLES_PER_SILO),
    key=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128),
    train_loss=st.floats(allow_nan=False, allow_infinity=False),
)
def test_update_header_round_trips(
    round_number: int, example_count: int, key: str, train_loss: float
) -> None:
    header = UpdateHeader(round_number, example_count, key, train_loss)

    assert serde.update_header_from_proto(serde.update_header_to_proto(header)) == header


@given(
    round_number=st.integers(1, 2**62),
    cohort_size=st.integers(1, 10_000),
    per_silo=st.integers(1, MAX_EXAMPLES_PER_SILO),
    key=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128),
)
def test_aggregate_header_round_trips(round_number: int, cohort_size: int, per_silo: int, key: str) -> None:
    header = AggregateHeader(
        round_number,
        cohort_size,
        per_silo * cohort_size,
        key,
        withheld_tensors=("head/bias",),
        policy_sha256="sha256:" + "ab" * 32,
        compression="int8",
    )

    assert serde.aggregate_header_from_proto(serde.aggregate_header_to_proto(header)) == header


DECLARED = AggregateHeader(1, 5, 300, "EU/round-1", policy_sha256="sha256:" + "ab" * 32)


def test_an_aggregate_header_carries_the_privacy_spent_or_none() -> None:
    noisy = replace(DECLARED, privacy=PrivacySpend(epsilon=1.25, delta=1e-5, period_days=90))

    assert serde.aggregate_header_from_proto(serde.aggregate_header_to_proto(noisy)) == noisy
    assert serde.aggregate_header_from_proto(serde.aggregate_header_to_proto(DECLARED)).privacy is None


@pytest.mark.parametrize(
    ("epsilon", "delta", "period_days"),
    [(1.0, 0.0, 0), (0.0, 1e-5, 90), (math.nan, 1e-5, 90), (-1.0, 1e-5, 90), (1.0, 1.0, 90), (1.0, 1e-5, 0)],
)
def test_a_partial_or_impossible_privacy_declaration_is_refused(
    epsilon: float, delta: float, period_days: int
) -> None:
    message = serde.aggregate_header_to_proto(DECLARED)
    message.dp_epsilon, message.dp_delta, message.dp_period_days = epsilon, delta, period_days

    with pytest.raises(InvalidInput, match="must all be zero"):
        serde.aggregate_header_from_proto(message)


def test_round_summary_round_trips_with_its_rejections() -> None:
    summary = RoundSummary(
        round=4,
        outcome="aborted: quorum not reached",
        participants=("hospital-a", "hospital-b"),
        example_total=1200,
        bytes_received=3_000_000,
        float32_bytes_equivalent=12_000_000,
        wall_time_s=31.5,
        model_sha256="",
        rejections=(Rejection("hospital-c", "INVALID_ARGUMENT", "tensor 'w': NaN"),),
    )

    assert serde.round_summary_from_proto(serde.round_summary_to_proto(summary)) == summary


def test_contribution_round_trips() -> None:
    contribution = Contribution(2, "EU", 3, 900, 1_000_000, 4_000_000)

    assert serde.contribution_from_proto(serde.contribution_to_proto(contribution)) == contribution


# --- What a peer may not send ------------------------------------------------------------

UPDATE = serde.update_header_to_proto(UpdateHeader(1, 100, "silo-a/round-1", 0.7))
AGGREGATE = serde.aggregate_header_to_proto(AggregateHeader(1, 2, 300, "EU/round-1"))
CONTRIBUTION = serde.contribution_to_proto(Contribution(1, "EU", 2, 300, 10, 40))


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (changed(UPDATE, round=0), "update header: round must be at least 1, got 0"),
        (changed(UPDATE, round=-3), "round must be at least 1, got -3"),
        (changed(UPDATE, example_count=0), "example_count must be between 1 and 1000000000, got 0"),
        (
            changed(UPDATE, example_count=MAX_EXAMPLES_PER_SILO + 1),
            "example_count must be between 1 and 1000000000, got 1000000001",
        ),
        (changed(UPDATE, idempotency_key=""), "idempotency_key is empty"),
        (
            changed(UPDATE, idempotency_key="k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1)),
            "idempotency_key has 129 characters, at most 128 allowed",
        ),
        (changed(UPDATE, idempotency_key="key\nx"), "printable ASCII; character 3 is '\\n'"),
        (changed(UPDATE, idempotency_key="clé"), "printable ASCII; character 2 is 'é'"),
        (changed(UPDATE, train_loss=math.nan), "train_loss must be a finite number, got nan"),
        (changed(UPDATE, train_loss=-math.inf), "train_loss must be a finite number, got -inf"),
    ],
)
def test_an_invalid_update_header_is_refused(message: regional_pb2.UpdateHeader, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.update_header_from_proto(message)

    assert problem in str(refused.value)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (changed(AGGREGATE, round=0), "aggregate header: round must be at least 1, got 0"),
        (changed(AGGREGATE, cohort_size=0), "cohort_size must be at least 1, got 0"),
        (changed(AGGREGATE, example_total=0), "example_total must be between 1 and 2000000000, got 0"),
        (
            changed(AGGREGATE, example_total=2 * MAX_EXAMPLES_PER_SILO + 1),
            "example_total must be between 1 and 2000000000, got 2000000001",
        ),
        (changed(AGGREGATE, idempotency_key=""), "idempotency_key is empty"),
        (changed(AGGREGATE, idempotency_key="a\x00b"), "character 1 is '\\x00'"),
    ],
)
def test_an_invalid_aggregate_header_is_refused(message: global_pb2.AggregateHeader, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.aggregate_header_from_proto(message)

    assert problem in str(refused.value)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (changed(CONTRIBUTION, round=0), "contribution: round must be at least 1"),
        (changed(CONTRIBUTION, jurisdiction=""), "contribution: jurisdiction is empty"),
        (changed(CONTRIBUTION, cohort_size=0), "cohort_size must be at least 1"),
        (changed(CONTRIBUTION, example_total=0), "example_total must be between 1 and"),
        (changed(CONTRIBUTION, bytes_received=-1), "bytes_received must be at least 0, got -1"),
    ],
)
def test_an_invalid_contribution_is_refused(message: global_pb2.Contribution, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.contribution_from_proto(message)

    assert problem in str(refused.value)


def training(**fields: Any) -> rounds_pb2.TrainingConfig:
    return changed(serde.training_config_to_proto(TRAINING), **fields)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (training(epochs=0), "training config: epochs must be at least 1, got 0"),
        (training(batch_size=-1), "batch_size must be at least 1, got -1"),
        (training(learning_rate=0.0), "learning_rate must be a finite number above 0, got 0.0"),
        (training(learning_rate=-0.1), "learning_rate must be a finite number above 0, got -0.1"),
        (training(learning_rate=math.inf), "learning_rate must be a finite number above 0, got inf"),
        (training(learning_rate=math.nan), "learning_rate must be a finite number above 0, got nan"),
        (training(proximal_mu=-0.5), "proximal_mu must be a finite number of at least 0.0, got -0.5"),
        (training(proximal_mu=math.nan), "proximal_mu must be a finite number of at least 0.0, got nan"),
    ],
)
def test_an_invalid_training_config_is_refused(message: rounds_pb2.TrainingConfig, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.training_config_from_proto(message)

    assert problem in str(refused.value)


def spec_with(*tensors: tensors_pb2.TensorSpec) -> tensors_pb2.ModelSpec:
    return tensors_pb2.ModelSpec(architecture="m", tensors=tensors)


FLOAT32 = tensors_pb2.DTYPE_FLOAT32


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (spec_with(tensors_pb2.TensorSpec(name="", dtype=FLOAT32, shape=[1])), "a tensor has an empty name"),
        (
            spec_with(tensors_pb2.TensorSpec(name="w", shape=[1])),
            "tensor 'w' has dtype DTYPE_UNSPECIFIED, expected DTYPE_FLOAT32",
        ),
        (
            spec_with(tensors_pb2.TensorSpec(name="w", dtype=FLOAT32, shape=[3, -1])),
            "tensor 'w' has shape [3, -1]; dimensions must be 0 or more",
        ),
        (
            spec_with(tensors_pb2.TensorSpec(name="w", dtype=FLOAT32, shape=[2**40, 2**40])),
            "more values than a chunk offset can address",
        ),
        (
            spec_with(
                tensors_pb2.TensorSpec(name="w", dtype=FLOAT32, shape=[1]),
                tensors_pb2.TensorSpec(name="b", dtype=FLOAT32, shape=[1]),
                tensors_pb2.TensorSpec(name="w", dtype=FLOAT32, shape=[2]),
            ),
            "tensor names must be unique; repeated: ['w']",
        ),
    ],
)
def test_an_invalid_model_spec_is_refused(message: tensors_pb2.ModelSpec, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.model_spec_from_proto(message)

    assert problem in str(refused.value)


OPEN_MESSAGE = serde.round_announcement_to_proto(OPEN)


def without(message: rounds_pb2.RoundAnnouncement, field: str) -> rounds_pb2.RoundAnnouncement:
    copy = changed(message)
    copy.ClearField(field)
    return copy


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (
            changed(OPEN_MESSAGE, state=rounds_pb2.ROUND_STATE_UNSPECIFIED),
            "round state ROUND_STATE_UNSPECIFIED",
        ),
        (changed(OPEN_MESSAGE, state=9), "round state 9 (unknown) is not one of WAITING, OPEN, FINISHED"),
        (changed(OPEN_MESSAGE, round=0), "round announcement: round must be at least 1, got 0"),
        (without(OPEN_MESSAGE, "model_spec"), "an open round must carry model_spec and training"),
        (without(OPEN_MESSAGE, "training"), "an open round must carry model_spec and training"),
        (
            changed(OPEN_MESSAGE, state=rounds_pb2.ROUND_STATE_WAITING),
            "a waiting round carries no model_spec, training or contract",
        ),
        (changed(OPEN_MESSAGE, deadline_in_s=math.nan), "deadline_in_s must be a finite number, got nan"),
        (changed(OPEN_MESSAGE, base_model_sha256=""), "base_model_sha256 must be 64 lowercase hex digits"),
        (changed(OPEN_MESSAGE, base_model_sha256=SHA.upper()), "base_model_sha256 must be 64 lowercase hex"),
        (
            changed(
                OPEN_MESSAGE, model_spec=serde.model_spec_to_proto(ModelSpec("m", (TensorSpec("", (1,)),)))
            ),
            "a tensor has an empty name",
        ),
        (changed(OPEN_MESSAGE, training=rounds_pb2.TrainingConfig()), "epochs must be at least 1, got 0"),
    ],
)
def test_an_invalid_round_announcement_is_refused(
    message: rounds_pb2.RoundAnnouncement, problem: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.round_announcement_from_proto(message)

    assert problem in str(refused.value)


SUMMARY = serde.round_summary_to_proto(RoundSummary(1, "committed", ("a",), 10, 100, 400, 2.0, SHA))


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (changed(SUMMARY, round=0), "round summary: round must be at least 1, got 0"),
        (changed(SUMMARY, example_total=-1), "example_total must be at least 0, got -1"),
        (changed(SUMMARY, bytes_received=-1), "bytes_received must be at least 0, got -1"),
        (changed(SUMMARY, wall_time_s=math.inf), "wall_time_s must be a finite number of at least 0.0"),
        (changed(SUMMARY, wall_time_s=-1.0), "wall_time_s must be a finite number of at least 0.0, got -1.0"),
    ],
)
def test_an_invalid_round_summary_is_refused(message: rounds_pb2.RoundSummary, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        serde.round_summary_from_proto(message)

    assert problem in str(refused.value)


def test_a_tensor_spec_the_wire_cannot_carry_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="dtype float16"):
        serde.tensor_spec_to_proto(TensorSpec("w", (2,), "float16"))


def test_an_exclusion_names_a_known_reason_and_comes_only_with_a_waiting_answer() -> None:
    unknown = rounds_pb2.RoundAnnouncement(state=rounds_pb2.ROUND_STATE_WAITING, round=2)
    unknown.exclusion.code = "too_tall"
    with pytest.raises(InvalidInput, match="exclusion code must be one of"):
        serde.round_announcement_from_proto(unknown)
    finished = rounds_pb2.RoundAnnouncement(state=rounds_pb2.ROUND_STATE_FINISHED, round=2)
    finished.exclusion.code = "stale"
    with pytest.raises(InvalidInput, match="only a waiting answer tells a silo why it is excluded"):
        serde.round_announcement_from_proto(finished)
    oversized = serde.round_announcement_to_proto(OPEN)
    oversized.contract = bytes(serde.MAX_CONTRACT_BYTES + 1)
    with pytest.raises(InvalidInput, match="the contract may take"):
        serde.round_announcement_from_proto(oversized)


def test_a_round_plan_travels_as_canonical_json_and_reads_back_equal() -> None:
    plan = RoundPlan(
        name="ml-team",
        rounds=4,
        cohort=Cohort(jurisdictions=("EU", "US"), min_silos_per_jurisdiction=2),
        gates=GateConfig(max_update_norm=3.0),
    )
    sent = serde.round_plan_to_json(plan)
    assert serde.round_plan_from_json(sent) == plan
    assert serde.round_plan_to_json(serde.round_plan_from_json(sent)) == sent
    with pytest.raises(InvalidInput, match="round plan is invalid"):
        serde.round_plan_from_json(sent.replace(b'"rounds":4', b'"rounds":0'))
    with pytest.raises(InvalidInput, match="round plan is not UTF-8 JSON"):
        serde.round_plan_from_json(b"rounds: 4")


def test_a_round_history_round_trips() -> None:
    history = RoundHistory(
        rounds=(
            RoundEntry(
                round=2,
                state="gate_failed",
                reason="gate_failed: gates failed: update_norm ...",
                contract_sha256=SHA,
                base_sha256=SHA,
                model_sha256=SHA,
                opened_at=1_700_000_000.5,
                closed_at=1_700_000_012.25,
                participants=(ParticipantEntry("EU", 300, 5, 1234, 4096, SHA, ("head/bias",)),),
                refusals=(Rejection("US", "late", "round 2 is closed"),),
                checks=(
                    CheckResult("update_norm", 40.0, "fails", 2.0, False),
                    CheckResult("probe_accuracy", None, "not a number"),
                ),
                left_out=(
                    LeftOutEntry(2, "US", True, "deadline_missed", "no aggregate"),
                    LeftOutEntry(2, "IN", False, "stale", "last synced in round 0"),
                ),
            ),
            RoundEntry(3, "open", "", SHA, SHA, SHA, 1_700_000_020.0, None),
        ),
        plans=(PlanProgress("demo", 1, 10, "aborted", "by operator ml-team"),),
        rollbacks=(RollbackEntry(3, 1, "bad data", 1_700_000_030.0), RollbackEntry(None, 0, "first", 1.0)),
        head_version=1,
        head_sha256=SHA,
    )
    assert serde.round_history_from_proto(serde.round_history_to_proto(history)) == history
    empty = RoundHistory((), (), (), None, "")
    assert serde.round_history_from_proto(serde.round_history_to_proto(empty)) == empty
    bad = serde.left_out_to_proto(LeftOutEntry(2, "US", True, "stale", "an exclusion code as a dropout"))
    with pytest.raises(InvalidInput, match="is not a reason code"):
        serde.left_out_from_proto(bad)
