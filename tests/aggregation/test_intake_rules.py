"""A round's intake under a contract's rule gives exactly what the rule's own `next` gives on the
same updates: result, next state and measurements; restored contributions count once; a screen
keeps the outlier out and names it; whole-model rules refuse contributions that withhold tensors."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.aggregation.factories import parse_rule
from jurisfed.aggregation.intake import RoundIntake
from jurisfed.aggregation.process import RuleState, flatten
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.errors import InvalidInput
from jurisfed.tensors import ModelSpec, TensorSpec, Weights
from jurisfed.wire.chunks import encode_tensors

SPEC = ModelSpec("test", (TensorSpec("dense/kernel", (4, 3)), TensorSpec("dense/bias", (3,))))
RAW = Codec(CodecKind.RAW)
RULES = (
    "mean",
    "unweighted_mean",
    "median",
    "trimmed_mean(trim=0.2)",
    "clip(norm=1.5) > mean",
    "zero(norm=2.0) > unweighted_mean",
    "dp_gaussian(noise_multiplier=0, clip=1.0, clients=5)",
    "dp_adaptive(noise_multiplier=0, clients=5, initial_clip=0.5)",
    "screen() > median",
    "screen(max_norm_ratio=3) > clip(norm=2.0) > mean",
)


def updates(count: int, seed: int = 0) -> list[Weights]:
    rng = np.random.default_rng(seed)
    base = {t.name: rng.normal(size=t.shape).astype(np.float32) for t in SPEC.tensors}
    return [
        {
            name: (values + rng.normal(scale=0.3, size=values.shape)).astype(np.float32)
            for name, values in base.items()
        }
        for _ in range(count)
    ]


def weights_of(count: int) -> list[float]:
    return [float(10 + 7 * i) for i in range(count)]


def fold(intake: RoundIntake, batch: list[Weights], weights: list[float]) -> None:
    for index, (update, weight) in enumerate(zip(batch, weights, strict=True)):
        intake.receive(f"silo-{index}", f"key-{index}", weight, encode_tensors(SPEC, update))


@pytest.mark.parametrize("text", RULES)
def test_the_intake_folds_exactly_as_the_rules_own_next(text: str) -> None:
    rule = parse_rule(text)
    process = rule.create(SPEC)
    state = process.initialize()
    for round_number in (1, 2):  # the second round starts from the state the first left
        batch, weights = updates(5, seed=round_number), weights_of(5)
        expected = process.next(state, batch, weights)
        intake = RoundIntake(round_number, SPEC, codec=RAW, max_concurrent=2, rule=rule, rule_state=state)
        fold(intake, batch, weights)
        result = intake.close()
        assert result is not None
        for name in expected.result:
            np.testing.assert_array_equal(result[name], expected.result[name], err_msg=f"{text} {name}")
        assert intake.folded.state == expected.state
        assert flatten(intake.folded.measurements) == flatten(expected.measurements)
        state = RuleState.from_json(intake.folded.state.to_json())  # as a tier keeps it


def test_contributions_restored_after_a_restart_count_once_and_give_the_same_result() -> None:
    rule = parse_rule("trimmed_mean(trim=0.2)")
    batch, weights = updates(5), weights_of(5)
    first = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2, rule=rule)
    fold(first, batch, weights)
    restarted = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2, rule=rule)
    for index in range(3):  # recorded before the crash, folded again from the blob store
        restarted.restore(f"silo-{index}", f"key-{index}", weights[index], batch[index])
    for index in range(5):  # every silo retries its upload; the recorded ones are duplicates
        receipt = restarted.receive(
            f"silo-{index}", f"key-{index}", weights[index], encode_tensors(SPEC, batch[index])
        )
        assert receipt.duplicate is (index < 3)
    expected, result = first.close(), restarted.close()
    assert expected is not None
    assert result is not None
    for name in expected:
        np.testing.assert_array_equal(result[name], expected[name])


@pytest.mark.parametrize("text", ["screen() > trimmed_mean(trim=0.2)", "screen() > mean"])
def test_a_screen_keeps_a_sign_flipped_scaled_update_out_and_names_its_sender(text: str) -> None:
    rule = parse_rule(text)
    batch, weights = updates(5), weights_of(5)
    batch[3] = {name: values * -10 for name, values in batch[3].items()}
    intake = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2, rule=rule)
    fold(intake, batch, weights)
    result = intake.close()
    honest = [update for index, update in enumerate(batch) if index != 3]
    expected = rule.create(SPEC).next(rule.create(SPEC).initialize(), honest, weights[:3] + weights[4:])
    assert result is not None
    for name in result:
        np.testing.assert_allclose(result[name], expected.result[name], rtol=1e-6)
    assert [d.sender for d in intake.folded.outliers] == ["silo-3"]
    assert "cosine" in intake.folded.outliers[0].reason or "norm" in intake.folded.outliers[0].reason
    assert flatten(intake.folded.measurements)["excluded_count"] == 1.0


def test_a_whole_model_rule_refuses_a_contribution_that_withholds_tensors() -> None:
    intake = RoundIntake(1, SPEC, codec=RAW, max_concurrent=2, rule=parse_rule("median"))
    carried = SPEC.without(("dense/bias",))
    update = {"dense/kernel": np.ones((4, 3), dtype=np.float32)}
    with pytest.raises(
        InvalidInput, match="combines by median, which needs every tensor; EU withholds dense/bias"
    ):
        intake.receive("EU", "k", 1.0, encode_tensors(carried, update), withheld=frozenset({"dense/bias"}))
    assert intake.close() is None
