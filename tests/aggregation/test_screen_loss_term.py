"""The screen's loss term: a label-flipped update, whose norm and direction look ordinary, makes a
model worse on the tier's probe examples than the honest updates do, and is kept out by its probe
loss alone; a tier without examples runs the same rule without the term and says so."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jurisfed.aggregation.diagnostics import NOT_EVALUATED, OutlierRule, UpdateScreen, screen_batch
from jurisfed.aggregation.factories import parse_rule
from jurisfed.aggregation.intake import RoundIntake
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.errors import InvalidInput
from jurisfed.gates import GateConfig, evaluate_gates
from jurisfed.modeling.evaluation import MlpProbe
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.tensors import Weights, add
from jurisfed.wire.chunks import encode_tensors

ARCH = Mlp(8, (16,), 4)
SPEC = ARCH.spec()
BASE = ARCH.initial_weights(1)
LOSS_RULE = OutlierRule(max_loss_increase=0.5)


class Task:
    """Labels from a teacher network; honest silos move the base towards the teacher, a
    label-flipping silo towards the teacher with its classes shifted by one (what training on
    labels c -> c+1 converges to): same hidden layers, so an ordinary norm and direction."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.teacher = {name: 3 * values for name, values in ARCH.initial_weights(seed + 10).items()}
        features = rng.normal(size=(200, ARCH.input_dim)).astype(np.float32)
        labels = np.argmax(ARCH.logits(self.teacher, features), axis=1).astype(np.int64)
        self.examples = LabelledExamples(features, labels)
        shift = np.roll(np.arange(ARCH.num_classes), 1)
        self.flipped = {
            **self.teacher,
            "head/kernel": self.teacher["head/kernel"][:, shift],
            "head/bias": self.teacher["head/bias"][shift],
        }
        self.rng = rng

    def towards(self, target: Weights) -> Weights:
        return {
            name: (0.3 * (target[name] - BASE[name]) + 0.05 * self.rng.standard_normal(values.shape)).astype(
                np.float32
            )
            for name, values in BASE.items()
        }

    def round(self, honest: int) -> dict[str, Weights]:
        updates = {f"silo-{i}": self.towards(self.teacher) for i in range(honest)}
        updates["flip"] = self.towards(self.flipped)
        return updates

    def probe(self) -> MlpProbe:
        return MlpProbe(ARCH, self.examples, BASE)


@pytest.mark.parametrize("seed", range(4))
def test_a_label_flipped_update_is_kept_out_by_its_probe_loss_where_norm_and_cosine_see_nothing(
    seed: int,
) -> None:
    task = Task(seed)
    updates, probe = task.round(honest=5), task.probe()
    base_loss = probe.loss(SPEC.zeros())
    assert all(probe.loss(u) < base_loss for s, u in updates.items() if s != "flip")  # honest ones help
    assert probe.loss(updates["flip"]) > base_loss

    without = screen_batch(SPEC, updates)  # norm and cosine alone
    assert not any(d.outlier for d in without.values())
    assert without["flip"].cosine is not None
    assert without["flip"].cosine > 0.3

    judged = screen_batch(SPEC, updates, LOSS_RULE, probe=probe)
    assert [s for s, d in judged.items() if d.outlier] == ["flip"]
    flip = judged["flip"]
    assert flip.probe_loss == pytest.approx(probe.loss(updates["flip"]))
    honest_losses = [probe.loss(u) for s, u in updates.items() if s != "flip"]
    assert flip.reference_loss == pytest.approx(float(np.median([*honest_losses, flip.probe_loss])))
    assert flip.reason.startswith(f"probe loss {flip.probe_loss:.4f} on 200 examples is ")
    assert f"nats above the median {flip.reference_loss:.4f} (limit 0.5)" in flip.reason
    assert "norm" not in flip.reason
    assert "cosine" not in flip.reason


def test_the_streaming_screen_judges_the_loss_against_the_updates_admitted_this_round() -> None:
    task = Task(0)
    updates, probe = task.round(honest=4), task.probe()
    early = UpdateScreen(SPEC, LOSS_RULE, probe=probe)
    assert not early.screen("flip", updates["flip"]).outlier  # first to arrive: nothing to compare with
    screen = UpdateScreen(SPEC, LOSS_RULE, probe=probe)
    verdicts = {sender: screen.screen(sender, update) for sender, update in updates.items()}
    assert [s for s, d in verdicts.items() if d.outlier] == ["flip"]
    assert "probe loss" in verdicts["flip"].reason
    assert verdicts["silo-3"].reference_loss == pytest.approx(
        float(np.median([probe.loss(updates[f"silo-{i}"]) for i in range(3)]))
    )
    assert screen.admitted == 4


def test_without_probe_examples_the_loss_term_is_not_evaluated_and_the_rule_still_runs() -> None:
    updates = Task(1).round(honest=5)
    judged = screen_batch(SPEC, updates, LOSS_RULE)  # the tier holds no examples
    assert not any(d.outlier for d in judged.values())
    assert all(d.probe_loss is None and d.notes == (NOT_EVALUATED,) for d in judged.values())
    assert judged["flip"].reason == f"within the outlier rule ({NOT_EVALUATED})"
    streamed = UpdateScreen(SPEC, LOSS_RULE).screen("flip", updates["flip"])
    assert streamed.notes == (NOT_EVALUATED,)
    # A rule without the term neither evaluates nor notes it, even where the tier has examples.
    plain = screen_batch(SPEC, updates, OutlierRule(), probe=Task(1).probe())
    assert all(d.probe_loss is None and not d.notes for d in plain.values())


def fold(text: str, updates: dict[str, Weights], probe: MlpProbe | None) -> RoundIntake:
    intake = RoundIntake(
        1, SPEC, codec=Codec(CodecKind.RAW), max_concurrent=2, rule=parse_rule(text), probe=probe
    )
    for sender, update in updates.items():
        intake.receive(sender, f"{sender}-1", 50.0, encode_tensors(SPEC, update))
    intake.close()
    return intake


@pytest.mark.parametrize(
    "rule", ["screen(max_loss_increase=0.5) > mean", "screen(max_loss_increase=0.5) > median"]
)
def test_a_round_intake_keeps_the_flipped_update_out_with_the_tiers_probe_and_measures_it(rule: str) -> None:
    task = Task(2)
    updates = task.round(honest=4)  # the flipped update arrives last, after three are admitted
    folded = fold(rule, updates, task.probe()).folded
    assert [d.sender for d in folded.outliers] == ["flip"]
    assert "probe loss" in folded.outliers[0].reason
    assert folded.measurements["probe_loss_evaluated"] == 1.0
    assert folded.measurements["probe_examples"] == 200.0
    assert folded.measurements["excluded_count"] == 1

    unprobed = fold(rule, updates, None).folded
    assert unprobed.outliers == ()
    assert unprobed.measurements["probe_loss_evaluated"] == 0.0
    assert unprobed.measurements["probe_examples"] == 0.0


def test_the_probe_loss_is_the_gates_cross_entropy_of_base_plus_update() -> None:
    task = Task(3)
    update = task.towards(task.teacher)
    report = evaluate_gates(GateConfig(), ARCH, add(BASE, update), BASE, task.examples)
    assert task.probe().loss(update) == pytest.approx(report.candidate_loss, rel=1e-6)
    assert task.probe().loss(SPEC.zeros()) == pytest.approx(report.committed_loss, rel=1e-6)
    huge = {name: np.full_like(values, 1e30) for name, values in update.items()}
    assert not math.isfinite(task.probe().loss(huge))


def test_a_tier_builds_a_probe_only_from_examples_that_fit_the_round_s_model() -> None:
    examples = Task(0).examples
    assert MlpProbe.of(ARCH.name, None, BASE) is None
    assert MlpProbe.of("mlp-5-16-4", examples, BASE) is None
    assert MlpProbe.of("not-an-mlp", examples, BASE) is None
    probe = MlpProbe.of(ARCH.name, examples, BASE)
    assert probe is not None
    assert probe.size == 200


def test_the_canonical_text_spells_the_loss_term_out_only_when_it_is_set() -> None:
    text = "screen(max_norm_ratio=4.0, min_cosine=0.0, min_reference=3.0, max_loss_increase=0.5) > mean"
    assert str(parse_rule("screen(max_loss_increase=0.5) > mean")) == text
    assert str(parse_rule(text)) == text
    assert parse_rule(text).outlier_rule().max_loss_increase == 0.5  # type: ignore[attr-defined]
    # A rule without it keeps its text, and so the rule state kept under it.
    assert (
        str(parse_rule("screen() > median"))
        == "screen(max_norm_ratio=4.0, min_cosine=0.0, min_reference=3.0) > median"
    )


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_a_loss_limit_that_is_not_a_positive_number_of_nats_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="max_loss_increase must be a positive number"):
        parse_rule(f"screen(max_loss_increase={value}) > mean")
