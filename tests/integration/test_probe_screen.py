"""The screen's loss term in real tiers: a regional with a validation set, and a global with a probe
set, quarantine a label-flipping participant whose update has an ordinary norm and direction but
makes the model worse on those examples, with a reason that names the loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rounds_support
from rounds_support import ARCH, POLICY_EDITS, SPEC, Cluster, one_silo_cohorts, write_plan

from jurisfed.aggregation.diagnostics import UpdateScreen, screen_batch
from jurisfed.audit.events import Decision, EventKind
from jurisfed.eligibility import ExclusionReason
from jurisfed.modeling.evaluation import MlpProbe
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.tensors import Weights, add

pytestmark = pytest.mark.slow

DEADLINES = {"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0}


class Task:
    """Labels from a teacher network; honest participants move the base towards the teacher, the
    attacker towards the teacher with its classes shifted by one (training on flipped labels)."""

    def __init__(self, path: Path) -> None:
        rng = np.random.default_rng(5)
        self.teacher = {name: 3 * values for name, values in ARCH.initial_weights(15).items()}
        features = rng.normal(size=(300, ARCH.input_dim)).astype(np.float32)
        labels = np.argmax(ARCH.logits(self.teacher, features), axis=1).astype(np.int64)
        self.examples = LabelledExamples(features, labels)
        np.savez(path, features=features, labels=labels)
        self.path = path
        shift = np.roll(np.arange(ARCH.num_classes), 1)
        self.flipped = {
            **self.teacher,
            "head/kernel": self.teacher["head/kernel"][:, shift],
            "head/bias": self.teacher["head/bias"][shift],
        }
        self.rng = rng

    def towards(self, target: Weights, base: Weights) -> Weights:
        return {
            name: (0.3 * (target[name] - values) + 0.02 * self.rng.standard_normal(values.shape)).astype(
                np.float32
            )
            for name, values in base.items()
        }


def test_a_regional_with_a_validation_set_quarantines_a_silo_whose_update_raises_its_loss(
    cluster: Cluster, tmp_path: Path
) -> None:
    task = Task(tmp_path / "validation.npz")
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=1,
        deadlines=DEADLINES,
        aggregation={"silos": "screen(max_loss_increase=0.3) > mean", "jurisdictions": "mean"},
    )
    cluster.start_global(plan=str(plan))
    honest_names = ("s1", "s2", "s3")
    cluster.start_regional("EU", [*honest_names, "attacker"], validation_set=str(task.path))
    silos = {name: cluster.silo("EU", name) for name in (*honest_names, "attacker")}

    announced = silos["s1"].next_round(0)
    base = silos["s1"].fetch(announced.round, announced.base_model_sha256)
    deltas = {name: task.towards(task.teacher, base) for name in honest_names}
    deltas["attacker"] = task.towards(task.flipped, base)
    # What makes the attacker an attacker is its loss alone: by norm and direction it is one of them,
    # and the honest updates lower the validation loss while its update raises it.
    by_norm_and_direction = UpdateScreen(SPEC)
    assert not any(by_norm_and_direction.screen(name, delta).outlier for name, delta in deltas.items())
    probe = MlpProbe(ARCH, task.examples, base)
    base_loss = probe.loss(SPEC.zeros())
    honest_losses = [probe.loss(deltas[name]) for name in honest_names]
    assert max(honest_losses) < base_loss < probe.loss(deltas["attacker"])
    assert probe.loss(deltas["attacker"]) > max(honest_losses) + 0.3  # so above their median by more

    for name, delta in deltas.items():  # the attacker last, once three updates are admitted
        silo = silos[name]
        silo.fetch(announced.round, announced.base_model_sha256)
        assert silo.submit(announced.round, delta, examples=50, key=f"{name}-1").accepted
    cluster.wait_until_finished()

    state, blobs = cluster.state("regional-EU"), cluster.blobs("regional-EU")
    assert sorted(c.participant for c in state.contributions(1)) == ["attacker", "s1", "s2", "s3"]
    left_out = {(e.round, e.participant): e.reason for e in state.registry.left_out(1)}
    assert left_out == {(1, "attacker"): ExclusionReason.QUARANTINED}
    model = blobs.get_weights(state.checkpoint(1).blob_sha256, SPEC)
    honest_mean = {name: np.mean([deltas[s][name] for s in honest_names], axis=0) for name in base}
    expected = add(base, honest_mean)
    for name in model:
        np.testing.assert_allclose(model[name], expected[name], atol=1e-6)

    quarantines = [e for e in cluster.audit("regional-EU") if e.kind is EventKind.QUARANTINE]
    assert [(e.round_number, e.decision) for e in quarantines] == [(1, Decision.DENY)]
    reason = str(quarantines[0].details["reason"])
    assert f"probe loss {probe.loss(deltas['attacker']):.4f} on 300 examples is " in reason, reason
    assert "nats above the median" in reason
    assert "cosine" not in reason
    assert "norm" not in reason


def whole_eu_aggregates(text: str) -> str:
    """A policy edit: the EU sends every layer (a median combines whole models)."""
    return one_silo_cohorts(text).replace("      layers_stay_local: [head/bias]\n", "")


def test_a_global_with_a_probe_set_quarantines_a_jurisdiction_whose_aggregate_raises_its_loss(
    tmp_path: Path,
    pki: Path,
    signed_policy_set: Callable[[Path, dict[str, Callable[[str], str]]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = Task(tmp_path / "probe.npz")
    policies = signed_policy_set(tmp_path / "policies", {**POLICY_EDITS, "eu.yaml": whole_eu_aggregates})
    monkeypatch.setitem(rounds_support.LOCAL_LAYERS, "EU", ())
    cluster = Cluster.create(tmp_path / "run", pki, policies)
    try:
        plan = write_plan(
            tmp_path / "plan.yaml",
            rounds=1,
            cohort={"jurisdictions": ["EU", "IN", "US"], "min_silos_per_jurisdiction": 1},
            quorum={"min_jurisdictions": 2},
            deadlines=DEADLINES,
            aggregation={"silos": "mean", "jurisdictions": "screen(max_loss_increase=0.3) > median"},
        )
        cluster.start_global(plan=str(plan), expected_jurisdictions=3, probe_set=str(task.path))
        played = {j: cluster.regional_played(j) for j in ("EU", "IN", "US")}
        announced = {j: played[j].next_round(0) for j in played}
        base = played["EU"].fetch(announced["EU"])
        deltas = {j: task.towards(task.teacher, base) for j in ("EU", "IN")}
        deltas["US"] = task.towards(task.flipped, base)
        assert not any(d.outlier for d in screen_batch(SPEC, deltas).values())  # norm and cosine alone
        for jurisdiction, delta in deltas.items():
            if jurisdiction != "EU":
                played[jurisdiction].fetch(announced[jurisdiction])
            assert played[jurisdiction].submit(1, delta, examples=100, key=f"{jurisdiction}-1").accepted
        cluster.wait_until_finished()

        state = cluster.state("global")
        left_out = {(e.round, e.participant): e.reason for e in state.registry.left_out(1)}
        assert left_out == {(1, "US"): ExclusionReason.QUARANTINED}
        quarantines = [e for e in cluster.audit("global") if e.kind is EventKind.QUARANTINE]
        assert [(e.jurisdiction, e.round_number, e.decision) for e in quarantines] == [
            ("US", 1, Decision.DENY)
        ]
        reason = str(quarantines[0].details["reason"])
        assert "probe loss" in reason, reason
        assert "on 300 examples" in reason
        assert "cosine" not in reason
    finally:
        cluster.close()
