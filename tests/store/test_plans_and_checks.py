"""Round plans and round checks in a tier's state file: one plan runs at a time and a restarted
tier finds it; a round's gates and metrics read back as recorded, NaN as "not computed"."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from jurisfed.errors import InvalidInput, WrongState
from jurisfed.rounds import CheckResult
from jurisfed.store.plans import PlanStatus
from jurisfed.store.tier_state import TierState


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_one_plan_runs_at_a_time_and_a_restarted_tier_finds_it(tmp_path: Path) -> None:
    state = TierState(tmp_path / "state.sqlite")
    started = state.plans.start("demo", '{"name":"demo"}', first_round=1, rounds=10)
    assert (started.first_round, started.last_round, started.status) == (1, 10, PlanStatus.RUNNING)
    with pytest.raises(WrongState, match="plan demo is running \\(rounds 1-10\\); abort it first"):
        state.plans.start("other", "{}", first_round=11, rounds=1)

    again = TierState(tmp_path / "state.sqlite")  # as after a restart
    running = again.plans.running()
    assert running is not None
    assert (running.name, running.document) == ("demo", '{"name":"demo"}')
    ended = again.plans.end(running.id, PlanStatus.ABORTED, "by operator ml-team: bad data")
    assert (ended.status, ended.reason) == (PlanStatus.ABORTED, "by operator ml-team: bad data")
    assert again.plans.end(running.id, PlanStatus.ABORTED, "again") == ended  # no change
    with pytest.raises(WrongState, match="already aborted"):
        again.plans.end(running.id, PlanStatus.FINISHED, "")
    assert again.plans.running() is None
    follow_up = again.plans.start("next", "{}", first_round=4, rounds=2)
    assert [p.name for p in again.plans.plans()] == ["demo", "next"]
    assert follow_up.last_round == 5
    with pytest.raises(InvalidInput):
        again.plans.start("", "{}", first_round=1, rounds=1)


def test_a_rounds_checks_read_back_as_recorded_and_a_second_recording_replaces_them(tmp_path: Path) -> None:
    state = TierState(tmp_path / "state.sqlite")
    gate = CheckResult("update_norm", 40.5, "the round changes the model by 40.5; it fails.", 2.0, False)
    metric = CheckResult("probe_accuracy", math.nan, "could not be computed")
    state.checks.record(3, [gate, metric])
    assert state.checks.of_round(3) == [gate, CheckResult("probe_accuracy", None, "could not be computed")]
    assert state.checks.of_round(3)[0].is_gate
    state.checks.record(3, [metric])  # re-evaluated after a restart while closing
    assert [c.name for c in state.checks.of_round(3)] == ["probe_accuracy"]
    assert state.checks.of_round(4) == []


def test_a_round_keeps_its_deadline_signature_and_what_each_contribution_carried(tmp_path: Path) -> None:
    state = TierState(tmp_path / "state.sqlite", clock=lambda: 1_700_000_000.0)
    opened = state.open_round(
        1, sha("contract"), sha("base"), duration_s=30.0, contract_signature=b"\x01" * 64
    )
    assert opened.deadline_at is not None
    assert opened.deadline_at.timestamp() == 1_700_000_030.0
    assert opened.contract_signature == b"\x01" * 64
    state.record_contribution(
        1,
        "EU",
        "eu-1",
        sha("eu"),
        300,
        cohort_size=5,
        bytes_received=1234,
        float32_bytes=4096,
        withheld=("head/bias",),
    )
    [kept] = state.resume().contributions
    assert (kept.cohort_size, kept.bytes_received, kept.float32_bytes, kept.withheld) == (
        5,
        1234,
        4096,
        ("head/bias",),
    )
    with pytest.raises(InvalidInput, match="cohort of at least one"):
        state.record_contribution(1, "US", "us-1", sha("us"), 10, cohort_size=0)
    with pytest.raises(InvalidInput, match="non-negative number of seconds"):
        state.open_round(2, sha("contract"), sha("base"), duration_s=-1.0)
