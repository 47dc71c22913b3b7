"""A tier's round state in SQLite: rounds open and close once, a contribution counts once
however often it is retried, a restarted tier finds the round it was in, and rollback moves
the head to a checkpoint whose blob gives back the exact bytes that were committed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from jurisfed.eligibility import DropoutReason, ExclusionReason
from jurisfed.errors import InvalidInput, NotFound, WrongState
from jurisfed.modeling.mlp import Mlp
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import NewCheckpoint, RoundStatus, StateUnavailable, TierState

MODEL = Mlp(input_dim=6, hidden_units=(4,), num_classes=3)
ARCH = MODEL.name


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CONTRACT = sha("contract")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> TierState:
    return TierState(tmp_path / "state.sqlite", clock=Clock())


def commit(state: TierState, number: int, model: str) -> None:
    state.close_round(number, RoundStatus.COMMITTED, "committed", checkpoint=NewCheckpoint(model, ARCH))


def test_a_round_opens_takes_contributions_and_commits_a_checkpoint(state: TierState) -> None:
    state.record_initial_checkpoint(sha("m0"), ARCH)
    opened = state.open_round(1, CONTRACT, sha("m0"))
    assert (opened.number, opened.state, opened.closed_at) == (1, RoundStatus.OPEN, None)

    state.record_contribution(1, "EU", "eu-r1", sha("eu delta"), 120)
    state.record_contribution(1, "US", "us-r1", sha("us delta"), 80)
    assert state.begin_closing(1).state is RoundStatus.CLOSING
    closed = state.close_round(
        1, RoundStatus.COMMITTED, "committed", checkpoint=NewCheckpoint(sha("m1"), ARCH)
    )

    assert closed.state is RoundStatus.COMMITTED
    assert closed.model_sha256 == sha("m1")
    assert closed.closed_at is not None
    assert closed.closed_at > closed.opened_at
    head = state.head()
    assert head is not None
    assert (head.version, head.blob_sha256, head.parent_version, head.committed_round) == (1, sha("m1"), 0, 1)
    assert [(c.participant, c.example_count) for c in state.contributions(1)] == [("EU", 120), ("US", 80)]


def test_the_same_idempotency_key_twice_is_one_contribution(state: TierState) -> None:
    state.open_round(1, CONTRACT, sha("m0"))
    first = state.record_contribution(1, "hospital-a", "key-1", sha("delta"), 50)
    retry = state.record_contribution(1, "hospital-a", "key-1", sha("delta"), 50)

    assert first.new
    assert not retry.new
    assert retry.contribution == first.contribution
    assert len(state.contributions(1)) == 1


def test_a_second_contribution_under_another_key_is_refused(state: TierState) -> None:
    state.open_round(1, CONTRACT, sha("m0"))
    state.record_contribution(1, "hospital-a", "key-1", sha("delta"), 50)
    with pytest.raises(WrongState, match="hospital-a already contributed to round 1"):
        state.record_contribution(1, "hospital-a", "key-2", sha("other delta"), 50)
    with pytest.raises(InvalidInput, match=r"reused idempotency key 'key-1' .* for different content"):
        state.record_contribution(1, "hospital-a", "key-1", sha("other delta"), 50)
    assert [c.content_sha256 for c in state.contributions(1)] == [sha("delta")]


def test_contributions_are_refused_once_the_round_is_closing_or_closed(state: TierState) -> None:
    with pytest.raises(WrongState, match="round 1 is never opened"):
        state.record_contribution(1, "EU", "k", sha("d"), 1)
    state.open_round(1, CONTRACT, sha("m0"))
    state.begin_closing(1)
    with pytest.raises(WrongState, match="round 1 is closing: it takes no contributions"):
        state.record_contribution(1, "EU", "k", sha("d"), 1)
    state.close_round(1, RoundStatus.ABORTED, "aborted: quorum not met (0 of 2 jurisdictions)")
    with pytest.raises(WrongState, match="round 1 is aborted"):
        state.record_contribution(1, "EU", "k", sha("d"), 1)
    assert state.contributions(1) == []


def test_an_abort_leaves_the_head_where_it_was(state: TierState) -> None:
    state.record_initial_checkpoint(sha("m0"), ARCH)
    state.open_round(1, CONTRACT, sha("m0"))
    state.record_contribution(1, "EU", "k", sha("d"), 10)
    aborted = state.close_round(1, RoundStatus.GATE_FAILED, "gates failed: accuracy_drop")

    assert (aborted.state, aborted.reason, aborted.model_sha256) == (
        RoundStatus.GATE_FAILED,
        "gates failed: accuracy_drop",
        sha("m0"),
    )
    head = state.head()
    assert head is not None
    assert head.version == 0
    assert [c.version for c in state.checkpoints()] == [0]


def test_one_round_in_flight_and_round_numbers_only_grow(state: TierState) -> None:
    state.open_round(2, CONTRACT, sha("m0"))
    with pytest.raises(WrongState, match="round 2 is still open; close it first"):
        state.open_round(3, CONTRACT, sha("m0"))
    assert state.open_round(2, CONTRACT, sha("m0")).number == 2  # re-opening after a restart
    with pytest.raises(WrongState, match="round 2 was already opened"):
        state.open_round(2, sha("another contract"), sha("m0"))
    state.close_round(2, RoundStatus.ABORTED, "operator abort")
    with pytest.raises(WrongState, match="round 2 was already opened"):
        state.open_round(2, CONTRACT, sha("m0"))
    with pytest.raises(WrongState, match="round 1 is not after round 2"):
        state.open_round(1, CONTRACT, sha("m0"))


def test_closing_twice_the_same_way_is_a_no_op_and_another_way_is_refused(state: TierState) -> None:
    state.open_round(1, CONTRACT, sha("m0"))
    first = state.close_round(
        1, RoundStatus.COMMITTED, "committed", checkpoint=NewCheckpoint(sha("m1"), ARCH)
    )
    again = state.close_round(
        1, RoundStatus.COMMITTED, "committed", checkpoint=NewCheckpoint(sha("m1"), ARCH)
    )
    assert again == first
    with pytest.raises(WrongState, match="round 1 is already committed"):
        state.close_round(1, RoundStatus.ABORTED, "too late")
    with pytest.raises(InvalidInput, match="committed round needs its checkpoint"):
        state.close_round(1, RoundStatus.COMMITTED, "committed")
    with pytest.raises(InvalidInput, match="ends committed, aborted or gate_failed"):
        state.close_round(1, RoundStatus.ROLLED_BACK, "no")


def test_a_restarted_tier_resumes_the_open_round_with_its_recorded_contributions(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    before = TierState(path)
    before.record_initial_checkpoint(sha("m0"), ARCH)
    commit_round(before, 1, sha("m1"))
    before.open_round(2, CONTRACT, sha("m1"))
    before.record_contribution(2, "EU", "eu-2", sha("eu"), 30)
    before.record_contribution(2, "IN", "in-2", sha("in"), 20)

    resumed = TierState(path).resume()  # the process died here; a new one opens the same file

    assert resumed.in_flight is not None
    assert (resumed.in_flight.number, resumed.in_flight.state) == (2, RoundStatus.OPEN)
    assert resumed.in_flight.base_sha256 == sha("m1")
    assert [(c.participant, c.idempotency_key, c.content_sha256) for c in resumed.contributions] == [
        ("EU", "eu-2", sha("eu")),
        ("IN", "in-2", sha("in")),
    ]
    assert resumed.head is not None
    assert resumed.head.version == 1
    assert resumed.next_round == 3
    again = TierState(path)
    assert not again.record_contribution(2, "EU", "eu-2", sha("eu"), 30).new  # the silo's retry


def commit_round(state: TierState, number: int, model: str) -> None:
    head = state.head()
    state.open_round(number, sha(f"contract {number}"), head.blob_sha256 if head else sha("none"))
    commit(state, number, model)


def test_with_nothing_in_flight_resume_says_where_to_go_on(state: TierState) -> None:
    empty = state.resume()
    assert (empty.head, empty.in_flight, empty.contributions, empty.next_round) == (None, None, (), 1)
    state.record_initial_checkpoint(sha("m0"), ARCH)
    commit_round(state, 1, sha("m1"))
    state.open_round(2, CONTRACT, sha("m1"))
    state.close_round(2, RoundStatus.ABORTED, "aborted")
    resumed = state.resume()
    assert resumed.in_flight is None
    assert resumed.contributions == ()
    assert resumed.next_round == 3


def test_rollback_restores_the_exact_bytes_of_an_earlier_checkpoint(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    state = TierState(tmp_path / "state.sqlite")
    spec = MODEL.spec()
    models = [MODEL.initial_weights(seed=s) for s in range(4)]
    state.record_initial_checkpoint(blobs.put_weights(spec, models[0]), ARCH)
    for number in (1, 2, 3):
        commit_round(state, number, blobs.put_weights(spec, models[number]))
    committed_bytes = {c.version: blobs.get(c.blob_sha256) for c in state.checkpoints()}

    target = state.rollback(1, "round 2 degraded accuracy on the EU population")

    head = state.head()
    assert head == target
    assert head.version == 1
    restored = blobs.get_weights(head.blob_sha256, spec)
    for name, values in models[1].items():
        np.testing.assert_array_equal(restored[name], values)
    assert blobs.get(head.blob_sha256) == committed_bytes[1]
    assert hashlib.sha256(blobs.get(head.blob_sha256)).hexdigest() == head.blob_sha256
    assert [r.state for r in state.rounds()] == [
        RoundStatus.COMMITTED,
        RoundStatus.ROLLED_BACK,
        RoundStatus.ROLLED_BACK,
    ]
    # The next round starts from checkpoint 1 and never reuses a number.
    resumed = state.resume()
    assert resumed.next_round == 4
    commit_round(state, 4, sha("m4"))
    assert state.checkpoint(4).parent_version == 1
    assert [(r.from_version, r.to_version) for r in state.rollbacks()] == [(3, 1)]


def test_rolling_forward_again_brings_rounds_back_onto_the_lineage(state: TierState) -> None:
    state.record_initial_checkpoint(sha("m0"), ARCH)
    for number in (1, 2, 3):
        commit_round(state, number, sha(f"m{number}"))
    state.rollback(0, "start over")
    assert {r.state for r in state.rounds()} == {RoundStatus.ROLLED_BACK}

    state.rollback(2, "round 3 was the bad one")

    assert [r.state for r in state.rounds()] == [
        RoundStatus.COMMITTED,
        RoundStatus.COMMITTED,
        RoundStatus.ROLLED_BACK,
    ]


def test_rollback_is_refused_while_a_round_is_in_flight_or_to_an_unknown_version(state: TierState) -> None:
    state.record_initial_checkpoint(sha("m0"), ARCH)
    commit_round(state, 1, sha("m1"))
    state.open_round(2, CONTRACT, sha("m1"))
    with pytest.raises(WrongState, match="round 2 is open; abort it before rolling back"):
        state.rollback(0, "why not")
    state.close_round(2, RoundStatus.ABORTED, "operator abort")
    with pytest.raises(NotFound, match="no checkpoint 7"):
        state.rollback(7, "typo")
    head = state.head()
    assert head is not None
    assert head.version == 1


def test_the_initial_checkpoint_is_recorded_once(state: TierState) -> None:
    first = state.record_initial_checkpoint(sha("m0"), ARCH)
    assert state.record_initial_checkpoint(sha("m0"), ARCH) == first
    with pytest.raises(WrongState, match="checkpoint 0 is already"):
        state.record_initial_checkpoint(sha("other"), ARCH)


def test_refusals_are_recorded_with_their_codes_beside_the_contributions(state: TierState) -> None:
    state.open_round(1, CONTRACT, sha("m0"))
    state.record_contribution(1, "hospital-a", "k", sha("d"), 10)
    state.close_round(1, RoundStatus.ABORTED, "deadline")
    state.record_refusal(1, "hospital-b", DropoutReason.LATE.value, "arrived 3 s after round 1 closed")
    state.record_refusal(1, "hospital-c", "INVALID_ARGUMENT", "tensor dense/kernel has a NaN")

    assert [(r.participant, r.code) for r in state.refusals(1)] == [
        ("hospital-b", "late"),
        ("hospital-c", "INVALID_ARGUMENT"),
    ]
    assert [c.participant for c in state.contributions(1)] == ["hospital-a"]
    with pytest.raises(InvalidInput, match="reason code"):
        state.record_refusal(1, "hospital-d", "two words", "")


def test_silos_register_sync_and_are_counted_when_left_out(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    registry = TierState(path).registry
    registry.register_silo("hospital-a", 120, sha("schema"), "0.1.0")
    registry.register_silo("hospital-b", 10, sha("schema"), "0.1.0")
    registry.mark_synced("hospital-a", 4)
    registry.mark_synced("hospital-a", 2)  # an old fetch finishing late never moves it back
    registry.register_silo("hospital-a", 130, sha("schema v2"), "0.2.0")  # re-registration keeps the sync

    silo = TierState(path).registry.silo("hospital-a")
    assert silo is not None
    assert (silo.example_count, silo.schema_sha256, silo.code_version, silo.last_synced_round) == (
        130,
        sha("schema v2"),
        "0.2.0",
        4,
    )
    assert [s.silo_id for s in registry.silos()] == ["hospital-a", "hospital-b"]
    assert registry.silo("hospital-z") is None
    with pytest.raises(NotFound, match="hospital-z is not registered"):
        registry.mark_synced("hospital-z", 1)

    assert registry.record_left_out(5, "hospital-b", ExclusionReason.TOO_FEW_EXAMPLES, "10 < 30")
    assert not registry.record_left_out(5, "hospital-b", ExclusionReason.TOO_FEW_EXAMPLES, "10 < 30")
    registry.record_left_out(5, "hospital-c", ExclusionReason.STALE, "last synced in round 1")
    registry.record_left_out(5, "hospital-a", DropoutReason.DEADLINE_MISSED, "no update by the deadline")
    registry.record_left_out(6, "hospital-b", ExclusionReason.TOO_FEW_EXAMPLES, "10 < 30")

    counts = registry.left_out_counts(5)
    assert counts == {
        ExclusionReason.TOO_FEW_EXAMPLES: 1,
        ExclusionReason.STALE: 1,
        DropoutReason.DEADLINE_MISSED: 1,
    }
    assert [(e.participant, e.dropout) for e in registry.left_out(5)] == [
        ("hospital-b", False),
        ("hospital-c", False),
        ("hospital-a", True),
    ]


def test_a_checkpoint_index_row_can_never_be_changed(tmp_path: Path) -> None:
    import sqlite3

    state = TierState(tmp_path / "state.sqlite")
    state.record_initial_checkpoint(sha("m0"), ARCH)
    db = sqlite3.connect(tmp_path / "state.sqlite")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE checkpoints SET blob_sha256 = 'x' WHERE version = 0")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM checkpoints")
    finally:
        db.close()
    assert state.checkpoint(0).blob_sha256 == sha("m0")


def test_a_state_file_from_a_newer_jurisfed_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.sqlite"
    TierState(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StateUnavailable, match=f"tier state {path} has schema 99; this jurisfed reads 1"):
        TierState(path)
