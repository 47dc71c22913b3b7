"""Poisoning screen and quarantine at a real regional: a silo that sends a sign-flipped x10 update is
kept out of the trimmed mean, quarantined with the reason, refused the next round, shown in
`jurisfed round status` and the audit log, and takes part again once an operator re-admits it.
The global does the same across three jurisdictions."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
import rounds_support
from prometheus_client.parser import text_string_to_metric_families
from rounds_support import POLICY_EDITS, SPEC, Cluster, constant, free_port, one_silo_cohorts, write_plan

from jurisfed.audit.events import Decision, EventKind
from jurisfed.eligibility import ExclusionReason
from jurisfed.tensors import add
from jurisfed.wire.v1 import rounds_pb2

if TYPE_CHECKING:
    from rounds_support import TestSilo

pytestmark = pytest.mark.slow

HONEST = {"s1": 0.10, "s2": 0.11, "s3": 0.12}
ATTACK = -10 * 0.10  # s1's update, sign-flipped and scaled ten times


def quarantine_cli(cluster: Cluster, *arguments: str) -> subprocess.CompletedProcess[str]:
    action, *rest = arguments
    state_dir = str(cluster.directory / "regional-EU")
    command = [sys.executable, "-m", "jurisfed", "quarantine", action, *rest, "--state-dir", state_dir]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_poisoning_silo_is_kept_out_quarantined_refused_and_readmitted_by_an_operator(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=3,
        deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
        aggregation={"silos": "screen() > trimmed_mean(trim=0.25)", "jurisdictions": "mean"},
    )
    cluster.start_global(plan=str(plan))
    metrics_port = free_port()
    cluster.start_regional(
        "EU", [*HONEST, "attacker"], telemetry={"metrics_listen": f"127.0.0.1:{metrics_port}"}
    )
    honest = {name: cluster.silo("EU", name) for name in HONEST}
    attacker = cluster.silo("EU", "attacker")

    def everyone_takes_part(round_number: int, silos: dict[str, TestSilo], attack: float | None) -> None:
        for name, silo in silos.items():
            assert silo.take_part(round_number - 1, HONEST[name]) == round_number
        if attack is not None:
            assert attacker.take_part(round_number - 1, attack) == round_number

    everyone_takes_part(1, honest, attack=ATTACK)

    # Round 2: the attacker is left out as quarantined and its update is refused.
    assert honest["s1"].next_round(1).round == 2
    told = attacker.wait_for_task(1, max_wait_s=5.0)
    assert (told.state, told.round, told.exclusion.code) == (rounds_pb2.ROUND_STATE_WAITING, 2, "quarantined")
    assert "attacker is quarantined since round 1" in told.exclusion.reason
    with pytest.raises(grpc.RpcError) as refused:
        attacker.submit(2, constant(0.1), examples=50, key="attacker-2")
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "attacker is quarantined since round 1" in str(refused.value.details())
    assert "jurisfed quarantine readmit attacker" in str(refused.value.details())

    listed = quarantine_cli(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    assert "1 quarantined now" in listed.stdout
    assert "attacker: quarantined in round 1" in listed.stdout
    readmitted = quarantine_cli(cluster, "readmit", "attacker", "--by", "alice", "--note", "key rotated")
    assert readmitted.returncode == 0, readmitted.stderr
    assert "re-admitted attacker" in readmitted.stdout
    assert quarantine_cli(cluster, "readmit", "attacker", "--by", "alice").returncode == 1  # not any more

    everyone_takes_part(2, honest, attack=None)
    everyone_takes_part(3, honest, attack=0.11)  # re-admitted, and honest this time
    cluster.wait_until_finished()

    state, blobs = cluster.state("regional-EU"), cluster.blobs("regional-EU")
    assert [sorted(c.participant for c in state.contributions(n)) for n in (1, 2, 3)] == [
        ["attacker", "s1", "s2", "s3"], ["s1", "s2", "s3"], ["attacker", "s1", "s2", "s3"],
    ]  # fmt: skip
    # Round 1's model is its base plus the mean of the honest three alone (with the attacker the
    # trimmed mean of four would be 0.105).
    record = state.round(1)
    base = blobs.get_weights(record.base_sha256, SPEC)
    model = blobs.get_weights(state.checkpoint(1).blob_sha256, SPEC)
    expected = add(base, constant(float(np.mean(list(HONEST.values())))))
    for name in model:
        np.testing.assert_allclose(model[name], expected[name], atol=1e-6)
    left_out = {(e.round, e.participant): e.reason for n in (1, 2, 3) for e in state.registry.left_out(n)}
    assert left_out == {
        (1, "attacker"): ExclusionReason.QUARANTINED,
        (2, "attacker"): ExclusionReason.QUARANTINED,
    }

    # The regional's Prometheus endpoint counts the quarantine, the time to remedy it and every
    # update norm it diagnosed (4 + 3 + 4).
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.read().decode())
            for sample in family.samples
        }
    assert samples["jurisfed_quarantines_total"] == 1
    assert samples["jurisfed_quarantine_remediation_seconds_count"] == 1
    assert samples["jurisfed_update_norm_count"] == 11

    status = cluster.cli("status", "--regional", f"EU={cluster.addresses['regional-EU']}")
    assert status.returncode == 0, status.stderr
    assert "attacker excluded (quarantined): attacker is quarantined since round 1" in status.stdout, (
        status.stdout
    )

    quarantines = [e for e in cluster.audit("regional-EU") if e.kind is EventKind.QUARANTINE]
    assert [(e.round_number, e.decision) for e in quarantines] == [(1, Decision.DENY), (1, Decision.ALLOW)]
    assert "cosine" in str(quarantines[0].details["reason"])
    assert "re-admitted by alice: key rotated" in str(quarantines[1].details["reason"])
    history = quarantine_cli(cluster, "list", "--all")
    assert "0 quarantined now; 1 quarantines, 1 re-admissions" in history.stdout
    assert "re-admitted at" in history.stdout


def whole_eu_aggregates(text: str) -> str:
    """A policy edit: the EU sends every layer (a median combines whole models)."""
    return one_silo_cohorts(text).replace("      layers_stay_local: [head/bias]\n", "")


def test_the_global_keeps_a_poisoned_jurisdiction_out_of_the_median_and_refuses_it_next_round(
    tmp_path: Path,
    pki: Path,
    signed_policy_set: Callable[[Path, dict[str, Callable[[str], str]]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policies = signed_policy_set(tmp_path / "policies", {**POLICY_EDITS, "eu.yaml": whole_eu_aggregates})
    monkeypatch.setitem(rounds_support.LOCAL_LAYERS, "EU", ())
    cluster = Cluster.create(tmp_path / "run", pki, policies)
    try:
        plan = write_plan(
            tmp_path / "plan.yaml",
            cohort={"jurisdictions": ["EU", "IN", "US"], "min_silos_per_jurisdiction": 1},
            quorum={"min_jurisdictions": 2},
            deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
            aggregation={"silos": "mean", "jurisdictions": "screen() > median"},
        )
        cluster.start_global(plan=str(plan), expected_jurisdictions=3)
        played = {j: cluster.regional_played(j) for j in ("EU", "IN", "US")}
        for jurisdiction, value in (("EU", 0.01), ("IN", 0.012), ("US", -0.1)):
            regional = played[jurisdiction]
            regional.fetch(regional.next_round(0))
            assert regional.submit(1, constant(value), examples=100, key=f"{jurisdiction}-1").accepted
        assert played["US"].next_round(1).round == 2
        with pytest.raises(grpc.RpcError) as refused:
            played["US"].submit(2, constant(0.01), examples=100, key="US-2")
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "US is quarantined since round 1" in str(refused.value.details())
        for jurisdiction in ("EU", "IN"):
            regional = played[jurisdiction]
            regional.fetch(regional.next_round(1))
            assert regional.submit(2, constant(0.01), examples=100, key=f"{jurisdiction}-2").accepted
        cluster.wait_until_finished()

        state = cluster.state("global")
        left_out = {(e.round, e.participant): e.reason for n in (1, 2) for e in state.registry.left_out(n)}
        assert left_out[(1, "US")] is ExclusionReason.QUARANTINED
        base = cluster.blobs("global").get_weights(state.round(1).base_sha256, SPEC)
        model = cluster.blobs("global").get_weights(state.checkpoint(1).blob_sha256, SPEC)
        for name in model:  # the median of EU and IN alone: 0.011, int8 rounding aside
            np.testing.assert_allclose(model[name] - base[name], 0.011, atol=2e-4)
        quarantines = [e for e in cluster.audit("global") if e.kind is EventKind.QUARANTINE]
        assert [(e.jurisdiction, e.round_number, e.decision) for e in quarantines] == [
            ("US", 1, Decision.DENY)
        ]
    finally:
        cluster.close()
