"""The ML team's rounds against real processes: acceptance gates, rollback to exact bytes, plans
started and aborted from the command line, and silos excluded by a contract's eligibility rules
with their reason codes in `jurisfed round status`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rounds_support import (
    OPERATOR,
    SPEC,
    Cluster,
    assert_rounds_add_up,
    constant,
    write_plan,
)

from jurisfed.audit.events import Decision, EventKind
from jurisfed.store.tier_state import RoundStatus
from jurisfed.tensors import weights_sha256
from jurisfed.wire.v1 import rounds_pb2

pytestmark = pytest.mark.slow

SCHEMA = "ab" * 32


def probe_set(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, features=rng.random((60, 4), dtype=np.float32), labels=rng.integers(0, 3, 60))
    return path


def test_a_poisoned_round_fails_its_gate_and_leaves_the_committed_checkpoint_as_it_was(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=3,
        deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
        gates={"max_update_norm": 2.0, "max_accuracy_drop": 1.0},
    )
    cluster.start_global(plan=str(plan), probe_set=str(probe_set(tmp_path / "probe.npz")))
    eu = cluster.regional_played("EU")
    bases = []
    for number, value in ((1, 0.01), (2, 5.0), (3, 0.02)):  # round 2 is poisoned: norm about 40
        task = eu.next_round(number - 1)
        bases.append(task.base_model_sha256)
        eu.fetch(task)
        assert eu.submit(number, constant(value), examples=100, key=f"eu-{number}").accepted
    cluster.wait_until_finished()

    state = cluster.state("global")
    assert [r.state for r in state.rounds()] == [
        RoundStatus.COMMITTED,
        RoundStatus.GATE_FAILED,
        RoundStatus.COMMITTED,
    ]
    assert [c.version for c in state.checkpoints()] == [0, 1, 3]
    checkpoint_1 = state.checkpoint(1).blob_sha256
    # Round 2 merged nothing: round 3 started from checkpoint 1, and round 2's model is checkpoint 1.
    assert bases[1] == bases[2] == checkpoint_1
    assert state.round(2).model_sha256 == checkpoint_1
    assert state.checkpoint(3).parent_version == 1
    failed = [c for c in state.checks.of_round(2) if c.is_gate and not c.passed]
    assert [c.name for c in failed] == ["update_norm"]
    assert "so it fails" in failed[0].sentence
    assert {c.name for c in state.checks.of_round(1)} >= {"probe_accuracy", "probe_loss", "update_norm"}
    gates = [e for e in cluster.audit("global") if e.kind is EventKind.GATE and e.round_number == 2]
    assert (Decision.FAIL, "update_norm") in {(e.decision, e.details["metric"]) for e in gates}
    assert_rounds_add_up(cluster, "global")

    shown = cluster.cli("history")
    assert shown.returncode == 0, shown.stderr
    assert "round 2 [gate_failed: gates failed: update_norm:" in shown.stdout, shown.stdout
    assert "update_norm FAIL" in shown.stdout
    assert "round 1 [committed] plan test" in shown.stdout
    assert f"model {checkpoint_1}" in shown.stdout


def test_rollback_restores_the_exact_bytes_of_a_checkpoint_and_the_next_plan_starts_from_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    deadlines = {"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0}
    first_plan = write_plan(tmp_path / "first.yaml", rounds=2, deadlines=deadlines)
    cluster.start_global(plan=str(first_plan))
    eu = cluster.regional_played("EU")
    for number in (1, 2):
        eu.fetch(eu.next_round(number - 1))
        assert eu.submit(number, constant(0.1 * number), examples=100, key=f"eu-{number}").accepted
    cluster.wait_until_finished()
    state, blobs = cluster.state("global"), cluster.blobs("global")
    checkpoint_1 = state.checkpoint(1).blob_sha256
    committed_bytes = (blobs.directory / checkpoint_1).read_bytes()

    # A plan runs round 3; a rollback while it is open is refused, an abort stops the plan.
    started = cluster.cli(
        "start", "--plan", str(write_plan(tmp_path / "second.yaml", name="second", deadlines=deadlines))
    )
    assert started.returncode == 0, started.stderr
    assert "started plan second: rounds 3-4, running" in started.stdout
    assert eu.next_round(2).round == 3
    refused = cluster.cli("rollback", "--to", "1")
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION: round 3 is open; abort it before rolling back" in refused.stderr
    aborted = cluster.cli("abort", "--reason", "bad data in round 2")
    assert aborted.returncode == 0, aborted.stderr
    assert "aborted round 3" in aborted.stdout
    assert (
        "stopped plan second: rounds 3-4, aborted (by operator ml-team: bad data in round 2)"
        in aborted.stdout
    )
    assert state.round(3).state is RoundStatus.ABORTED
    assert state.round(3).reason == "aborted: by operator ml-team: bad data in round 2"

    rolled = cluster.cli("rollback", "--to", "1", "--reason", "round 2 was trained on bad data")
    assert rolled.returncode == 0, rolled.stderr
    assert f"rolled back from checkpoint 2 to checkpoint 1: model {checkpoint_1}" in rolled.stdout
    head = state.head()
    assert head is not None
    assert head.version == 1
    assert state.round(2).state is RoundStatus.ROLLED_BACK
    # The next plan's first round starts from exactly those bytes.
    restarted = cluster.cli(
        "start", "--plan", str(write_plan(tmp_path / "third.yaml", name="third", rounds=1))
    )
    assert restarted.returncode == 0, restarted.stderr
    task = eu.next_round(3)
    assert (task.round, task.base_model_sha256) == (4, checkpoint_1)
    served = eu.fetch(task)  # receive_model checks the hash the round announced
    assert weights_sha256(SPEC, served) == checkpoint_1
    assert (blobs.directory / checkpoint_1).read_bytes() == committed_bytes
    assert eu.submit(4, constant(0.05), examples=100, key="eu-4").accepted
    cluster.wait_until_finished()
    assert state.checkpoint(4).parent_version == 1
    rollbacks = [e for e in cluster.audit("global") if e.kind is EventKind.ROLLBACK]
    assert [(e.details["checkpoint_version"], e.digests["model"]) for e in rollbacks] == [(1, checkpoint_1)]
    assert_rounds_add_up(cluster, "global")
    history = cluster.cli("history")
    assert "checkpoint 2 -> 1 (round 2 was trained on bad data)" in history.stdout


def test_ineligible_silos_are_told_why_and_each_reason_code_shows_in_round_status(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=4,
        deadlines={"silo_s": 2.5, "regional_s": 2.5, "global_s": 4.0},
        eligibility={
            "min_examples": 30,
            "max_staleness_rounds": 1,
            "code_versions": ["1.2.0"],
            "schema_sha256": SCHEMA,
        },
    )
    cluster.start_global(plan=str(plan))
    names = ["ok", "few", "old", "drifted", "lazy"]
    cluster.start_regional("EU", names)
    credentials = ["--tls-dir", str(cluster.tls(OPERATOR).cert.parent)]
    credentials += ["--token-key", str(cluster.nodes.token(OPERATOR).key)]
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jurisfed",
            "round",
            "watch",
            "--global",
            cluster.addresses["global"],
            *credentials,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    declared = {"examples": 50, "schema": SCHEMA, "code_version": "1.2.0"}
    ok, lazy = cluster.silo("EU", "ok", **declared), cluster.silo("EU", "lazy", **declared)
    excluded = {
        "few": cluster.silo("EU", "few", **{**declared, "examples": 10}),
        "old": cluster.silo("EU", "old", **{**declared, "code_version": "0.9.0"}),
        "drifted": cluster.silo("EU", "drifted", **{**declared, "schema": "cd" * 32}),
    }
    first = ok.next_round(0)
    for name, code in (
        ("few", "too_few_examples"),
        ("old", "wrong_code_version"),
        ("drifted", "schema_drift"),
    ):
        told = excluded[name].wait_for_task(0, max_wait_s=5.0)  # at once, while round 1 is open
        assert (told.state, told.round, told.exclusion.code) == (rounds_pb2.ROUND_STATE_WAITING, 1, code)
        assert told.exclusion.reason.startswith(name)
    ok.fetch(1, first.base_model_sha256)
    assert ok.submit(1, constant(0.1), examples=50, key="ok-1").accepted
    assert lazy.take_part(0, 0.1) == 1
    assert ok.take_part(1, 0.1) == 2  # lazy skips round 2: the round waits for it until its deadline
    third = ok.next_round(2)
    told = lazy.wait_for_task(1, max_wait_s=5.0)  # it last synced in round 1: stale in round 3
    assert (told.round, told.exclusion.code) == (3, "stale")
    assert "fetch the current checkpoint to rejoin" in told.exclusion.reason
    assert told.base_model_sha256 == third.base_model_sha256
    lazy.fetch(3, told.base_model_sha256)  # which it may, and so rejoins in round 4
    ok.fetch(3, third.base_model_sha256)
    assert ok.submit(3, constant(0.1), examples=50, key="ok-3").accepted
    assert lazy.take_part(3, 0.1) == 4
    assert ok.take_part(3, 0.1) == 4
    cluster.wait_until_finished()

    state = cluster.state("regional-EU")
    assert [sorted(c.participant for c in state.contributions(n)) for n in (1, 2, 3, 4)] == [
        ["lazy", "ok"], ["ok"], ["ok"], ["lazy", "ok"],
    ]  # fmt: skip
    status = cluster.cli("status", "--regional", f"EU={cluster.addresses['regional-EU']}")
    assert status.returncode == 0, status.stderr
    for line in (
        "round 1 left out: schema_drift 1, too_few_examples 1, wrong_code_version 1",
        "few excluded (too_few_examples): few holds 10 examples; round 1 requires at least 30",
        "old excluded (wrong_code_version)",
        "drifted excluded (schema_drift)",
        "round 2 left out: deadline_missed 1, schema_drift 1, too_few_examples 1, wrong_code_version 1",
        "lazy dropped out (deadline_missed)",
        "round 3 left out: schema_drift 1, stale 1, too_few_examples 1, wrong_code_version 1",
        "lazy excluded (stale): lazy last synced in round 1, 2 rounds before round 3",
    ):
        assert line in status.stdout, f"{line!r} not in:\n{status.stdout}"
    exclusions = [e for e in cluster.audit("regional-EU") if e.kind is EventKind.ELIGIBILITY_EXCLUSION]
    assert len(exclusions) == 3 * 4 + 1  # few, old, drifted every round; lazy once
    assert_rounds_add_up(cluster, "regional-EU")
    watched, _ = watch.communicate(timeout=30)
    assert watch.returncode == 0
    assert "round 1: committed; EU" in watched
    assert "waiting for EU" in watched, watched
    assert watched.splitlines()[-1] == "federation finished"
