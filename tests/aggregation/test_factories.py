"""Aggregation rules: each numpy process equals the tff.aggregators factory it mirrors.

Tests marked with `tff_cpp_context` run the TFF factory on the same inputs and compare the
result, the measurements (names and nesting included) and, for DP, the dp_accounting event.
The others cover what TFF does not: naming rules in a contract, delegation, streaming.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.stats

from jurisfed.aggregation.differential_privacy import AdaptiveGaussianDP, GaussianDP, find_dp
from jurisfed.aggregation.factories import (
    Clip,
    CoordinateMedian,
    TrimmedMean,
    UnweightedMean,
    WeightedMean,
    Zero,
    parse_rule,
)
from jurisfed.aggregation.process import (
    Accumulation,
    AggregationFactory,
    AggregationProcess,
    Output,
    RuleState,
    flatten,
)
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.tensors import FloatArray, ModelSpec, TensorSpec, Weights

SPEC = ModelSpec(
    "odd-shapes",
    (TensorSpec("dense/kernel", (7, 13)), TensorSpec("dense/bias", (13,)), TensorSpec("scale", ())),
)
# Norms from about 1 to 100, so some updates are clipped or zeroed and some are not.
SCALES = [0.1, 0.3, 1.0, 2.0, 4.0, 9.0]


def _updates(seed: int, scales: list[float] = SCALES, spec: ModelSpec = SPEC) -> list[Weights]:
    rng = np.random.default_rng(seed)
    return [
        {t.name: (rng.standard_normal(t.shape) * s).astype(np.float32) for t in spec.tensors} for s in scales
    ]


def _weights(count: int, seed: int) -> list[float]:
    return [float(w) for w in 10.0 ** np.random.default_rng(seed).uniform(0, 3, size=count)]


def _plain(measurements: object) -> object:
    """TFF measurements as plain nested dicts: () is an empty measurement, numbers are floats."""
    if isinstance(measurements, Mapping):
        return {str(key): _plain(value) for key, value in measurements.items()}
    if isinstance(measurements, tuple | list) and not measurements:
        return {}
    return float(np.asarray(measurements))


def _assert_measurements_equal(ours: object, theirs: object) -> None:
    if isinstance(theirs, dict):
        assert isinstance(ours, Mapping)
        assert sorted(ours) == sorted(theirs)
        for key in theirs:
            _assert_measurements_equal(ours[key], theirs[key])
    else:
        assert float(ours) == pytest.approx(theirs, rel=1e-6)  # type: ignore[arg-type]


class _TffRun:
    """One TFF aggregation process over SPEC, driven round by round like ours."""

    def __init__(self, factory: AggregationFactory, spec: ModelSpec = SPEC) -> None:
        import tensorflow_federated as tff

        # A Python container type, so TFF's tf.nest-based rules (clipping) see a dict, not a Struct.
        value_type = tff.StructWithPythonType(
            [(t.name, tff.TensorType(np.float32, t.shape)) for t in spec.tensors], collections.OrderedDict
        )
        tff_factory = factory.to_tff()
        self.weighted = factory.weighted
        self.process = (
            tff_factory.create(value_type, tff.TensorType(np.float32))
            if self.weighted
            else tff_factory.create(value_type)
        )
        self.state = self.process.initialize()

    def next(self, updates: list[Weights], weights: list[float]) -> tuple[Weights, object]:
        if self.weighted:
            output = self.process.next(self.state, updates, [np.float32(w) for w in weights])
        else:
            output = self.process.next(self.state, updates)
        self.state = output.state
        result = {name: np.asarray(value) for name, value in output.result.items()}
        return result, _plain(output.measurements)


def _assert_results_equal(ours: Weights, theirs: Weights) -> None:
    assert list(ours) == list(theirs)
    for name, expected in theirs.items():
        assert ours[name].dtype == np.float32
        assert ours[name].shape == expected.shape
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


TFF_RULES = [
    "mean",
    "unweighted_mean",
    "clip(norm=4.0) > mean",
    "zero(norm=2.5) > mean",  # max-norm, TFF's default order
    "zero(norm=60.0, order=2.0) > clip(norm=4.0) > unweighted_mean",
    "zero(norm=300.0, order=1.0) > mean",
    "dp_gaussian(noise_multiplier=0.0, clip=3.0, clients=6.0)",
    "clip(norm=5.0) > dp_gaussian(noise_multiplier=0.0, clip=3.0, clients=8.0)",
]


@pytest.mark.usefixtures("tff_cpp_context")
@pytest.mark.parametrize("rule", TFF_RULES)
def test_equals_the_tff_factory_it_mirrors(rule: str) -> None:
    factory = parse_rule(rule)
    updates, weights = _updates(1), _weights(len(SCALES), 1)
    process = factory.create(SPEC)

    ours = process.next(process.initialize(), updates, weights)
    theirs, tff_measurements = _TffRun(factory).next(updates, weights)

    _assert_results_equal(ours.result, theirs)
    _assert_measurements_equal(ours.measurements, tff_measurements)


@pytest.mark.usefixtures("tff_cpp_context")
def test_adaptive_clipping_follows_tff_round_after_round() -> None:
    rule = AdaptiveGaussianDP(noise_multiplier=0.0, clients=6.0, initial_clip=0.5, learning_rate=0.5)
    process, tff_run = rule.create(SPEC), _TffRun(rule)
    state = process.initialize()
    clips = []
    for round_number in range(4):
        updates = _updates(10 + round_number)
        output = process.next(state, updates)
        theirs, tff_measurements = tff_run.next(updates, [1.0] * len(updates))
        _assert_results_equal(output.result, theirs)
        _assert_measurements_equal(output.measurements, tff_measurements)
        state = output.state
        clips.append(state.get("clip"))
    # Most norms exceed 0.5, so the clip grows towards their median, by at most e^0.25 a round.
    assert clips == sorted(clips)
    assert clips[-1] > 0.5 * math.exp(0.1 * 4)


def _tff_dp_event(state: object) -> object:
    from tensorflow_federated.python.aggregators import differential_privacy

    return differential_privacy.extract_dp_event_from_state(state)


def _gaussian_multipliers(event: Any) -> list[float]:
    import dp_accounting

    if isinstance(event, dp_accounting.ComposedDpEvent):
        return [m for inner in event.events for m in _gaussian_multipliers(inner)]
    assert isinstance(event, dp_accounting.GaussianDpEvent)
    return [float(event.noise_multiplier)]


@pytest.mark.usefixtures("tff_cpp_context")
@pytest.mark.parametrize(
    "rule",
    [
        GaussianDP(noise_multiplier=0.8, clip=0.5, clients=4.0),
        AdaptiveGaussianDP(noise_multiplier=0.8, clients=40.0, initial_clip=0.5),
    ],
    ids=str,
)
def test_noise_and_privacy_event_match_tff(rule: GaussianDP | AdaptiveGaussianDP) -> None:
    spec = ModelSpec("wide", (TensorSpec("w", (300, 400)),))  # 120k values to measure noise on
    updates = _updates(3, [0.001, 0.002, 0.003], spec)
    noiseless = type(rule)(**{**rule.__dict__, "noise_multiplier": 0.0}).create(spec)  # type: ignore[arg-type]
    expected = noiseless.next(noiseless.initialize(), updates).result["w"]
    clip = rule.clip if isinstance(rule, GaussianDP) else rule.initial_clip
    value_noise = rule.noise_multiplier if isinstance(rule, GaussianDP) else rule.value_noise_multiplier
    stddev = clip * value_noise / rule.clients

    process = rule.create(spec, rng=np.random.default_rng(5))
    ours = process.next(process.initialize(), updates).result["w"]
    tff_run = _TffRun(rule, spec)
    theirs = tff_run.next(updates, [1.0] * 3)[0]["w"]

    assert np.std(ours - expected) == pytest.approx(stddev, rel=0.02)
    assert np.std(theirs - expected) == pytest.approx(stddev, rel=0.02)
    assert abs(float(np.mean(ours - expected))) < 4 * stddev / math.sqrt(expected.size)
    assert _gaussian_multipliers(rule.dp_event()) == pytest.approx(
        _gaussian_multipliers(_tff_dp_event(tff_run.state)), rel=1e-6
    )


# --- without TFF ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "mean",
        "unweighted_mean",
        "median",
        "trimmed_mean(trim=0.2)",
        "zero(norm=100.0, order=inf) > clip(norm=5.0) > mean",
        "clip(norm=1.5) > trimmed_mean(trim=0.1)",
        "dp_gaussian(noise_multiplier=1.1, clip=1.0, clients=10.0)",
        "clip(norm=5.0) > dp_adaptive(noise_multiplier=1.0, clients=100.0, initial_clip=0.1, "
        "target_quantile=0.5, learning_rate=0.2, count_stddev=5.0)",
    ],
)
def test_canonical_text_reads_back_to_the_same_rule(text: str) -> None:
    rule = parse_rule(text)
    assert str(rule) == text
    assert parse_rule(str(rule)) == rule


def test_text_may_omit_defaults_and_space_freely() -> None:
    rule = parse_rule(" zero( norm = 1e2 )>clip(norm=5)  >  trimmed_mean ")
    assert rule == Zero(norm=100.0, inner=Clip(norm=5.0, inner=TrimmedMean(trim=0.1)))
    assert str(rule) == "zero(norm=100.0, order=inf) > clip(norm=5.0) > trimmed_mean(trim=0.1)"
    adaptive = parse_rule("dp_adaptive(noise_multiplier=1.0, clients=100)")
    assert isinstance(adaptive, AdaptiveGaussianDP)
    assert adaptive.count_stddev == 5.0  # TFF's default, 0.05 * clients, spelled out


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("krum", "unknown rule 'krum'"),
        ("", "cannot read stage"),
        ("mean > clip(norm=1)", "cannot come last"),
        ("clip(norm=1)", "cannot come last"),
        ("clip(norm=1) > mean > mean", "must come last"),
        ("clip(1.0) > mean", "named arguments"),
        ("clip(radius=1.0) > mean", "named arguments"),
        ("clip(norm=abc) > mean", "as a number"),
        ("clip(norm=nan) > mean", "as a number"),
        ("clip(norm=1, norm=2) > mean", "given once"),
        ("clip > mean", "norm"),
        ("clip(norm=-1) > mean", "positive"),
        ("zero(norm=1, order=3) > mean", "order must be 1, 2 or inf"),
        ("trimmed_mean(trim=0.5)", "trim fraction"),
        ("dp_gaussian(noise_multiplier=1, clip=1)", "clients"),
        ("dp_gaussian(noise_multiplier=-1, clip=1, clients=3)", "non-negative"),
        ("dp_adaptive(noise_multiplier=2, clients=10)", "count_stddev"),
        ("mean(weights=1)", "none"),
    ],
)
def test_a_malformed_rule_is_refused_with_the_reason(text: str, complaint: str) -> None:
    with pytest.raises(InvalidInput, match=complaint.replace("(", r"\(")):
        parse_rule(text)


@dataclass(frozen=True)
class Probe(AggregationFactory):
    """A terminal that adds one to the weighted mean and counts the rounds it ran."""

    name: ClassVar[str] = "probe"

    @property
    def weighted(self) -> bool:
        return True

    def create(self, spec: ModelSpec, *, rng: np.random.Generator | None = None) -> AggregationProcess:
        return _ProbeProcess(spec)

    def to_tff(self) -> Any:
        raise NotImplementedError


class _ProbeProcess(AggregationProcess):
    def initialize(self) -> RuleState:
        return RuleState((("calls", 0.0),))

    def start(self, state: RuleState, *, expected_updates: int = 0) -> Accumulation:
        mean = WeightedMean().create(self.spec).start(RuleState())
        process = self

        class _Probe(Accumulation):
            def add(self, update: Mapping[str, FloatArray], weight: float) -> None:
                mean.add(update, weight)

            def finish(self) -> Output:
                result = {name: values + np.float32(1.0) for name, values in mean.finish().result.items()}
                calls = state.get("calls") + 1
                assert process.spec is SPEC
                return Output(RuleState((("calls", calls),)), result, {"probe_calls": calls})

        return _Probe()


def test_wrappers_delegate_to_the_rule_they_wrap_and_nest_its_measurements() -> None:
    rule = Zero(norm=1000.0, inner=Clip(norm=1e6, inner=Probe()))
    process = rule.create(SPEC)
    updates, weights = _updates(2), _weights(len(SCALES), 2)
    plain = WeightedMean().create(SPEC)
    mean = plain.next(plain.initialize(), updates, weights).result

    state = process.initialize()
    for _ in range(2):
        output = process.next(state, updates, weights)
        state = output.state

    for name, values in mean.items():
        np.testing.assert_allclose(output.result[name], values + 1.0, rtol=1e-6)
    assert output.measurements == {
        "zeroing": {
            "clipping": {"probe_calls": 2.0},
            "clipping_norm": 1e6,
            "clipped_count": 0,
        },
        "zeroing_norm": 1000.0,
        "zeroed_count": 0,
    }
    assert flatten(output.measurements)["zeroing/clipping/probe_calls"] == 2.0
    assert state.inner is not None
    assert state.inner.inner is not None
    assert state.inner.inner.get("calls") == 2.0


@pytest.mark.parametrize("text", ["clip(norm=2.0) > mean", "zero(norm=3.0, order=2.0) > median"])
def test_a_wrapper_never_changes_the_update_it_was_handed(text: str) -> None:
    updates = _updates(4)
    before = [{name: values.copy() for name, values in update.items()} for update in updates]
    process = parse_rule(text).create(SPEC)
    process.next(process.initialize(), updates)
    for update, original in zip(updates, before, strict=True):
        for name in update:
            np.testing.assert_array_equal(update[name], original[name])


@pytest.mark.parametrize(
    "text",
    ["mean", "zero(norm=50.0) > clip(norm=3.0) > mean", "trimmed_mean(trim=0.2)", "clip(norm=3.0) > median"],
)
def test_updates_fed_one_at_a_time_give_the_same_output(text: str) -> None:
    process = parse_rule(text).create(SPEC)
    updates, weights = _updates(5), _weights(len(SCALES), 5)
    batch = process.next(process.initialize(), updates, weights)

    accumulation = process.start(process.initialize())
    for update, weight in zip(updates, weights, strict=True):
        accumulation.add(update, weight)
    streamed = accumulation.finish()

    assert streamed.measurements == batch.measurements
    for name in batch.result:
        np.testing.assert_array_equal(streamed.result[name], batch.result[name])


def test_median_and_trimmed_mean_rules_equal_numpy_and_scipy_per_tensor() -> None:
    updates = _updates(6, [1.0] * 11)
    median = CoordinateMedian().create(SPEC)
    trimmed = TrimmedMean(trim=0.2).create(SPEC)

    by_median = median.next(median.initialize(), updates)
    by_trim = trimmed.next(trimmed.initialize(), updates)

    for tensor in SPEC.tensors:
        stacked = np.stack([u[tensor.name] for u in updates])
        np.testing.assert_array_equal(by_median.result[tensor.name], np.median(stacked, axis=0))
        np.testing.assert_allclose(
            by_trim.result[tensor.name], scipy.stats.trim_mean(stacked, 0.2, axis=0), rtol=1e-6, atol=1e-7
        )
    assert by_trim.measurements == {"trimmed_per_side": 2}


@pytest.mark.parametrize("text", ["clip(norm=1.0) > mean", "zero(norm=1.0) > mean", "median"])
def test_an_update_holding_nan_is_refused(text: str) -> None:
    process = parse_rule(text).create(SPEC)
    poisoned = _updates(7)
    poisoned[2]["dense/kernel"][3, 4] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        process.next(process.initialize(), poisoned)


@pytest.mark.parametrize("text", ["median", "trimmed_mean(trim=0.2)", "clip(norm=1.0) > mean"])
def test_a_refused_update_leaves_the_round_going(text: str) -> None:
    process = parse_rule(text).create(SPEC)
    updates = _updates(11)
    poisoned = {**updates[0], "scale": np.array(np.inf, dtype=np.float32)}
    accumulation = process.start(process.initialize())
    with pytest.raises(InvalidInput):
        accumulation.add(poisoned, 1.0)
    for update in updates:
        accumulation.add(update, 1.0)

    expected = process.next(process.initialize(), updates)
    for name, values in accumulation.finish().result.items():
        np.testing.assert_array_equal(values, expected.result[name])


def test_a_round_with_no_update_has_no_mean_or_median() -> None:
    for rule in (WeightedMean(), UnweightedMean(), CoordinateMedian()):
        process = rule.create(SPEC)
        with pytest.raises(WrongState):
            process.next(process.initialize(), [])


def test_state_survives_a_restart_as_json() -> None:
    rule = parse_rule("clip(norm=9.0) > dp_adaptive(noise_multiplier=0.0, clients=6.0, initial_clip=0.5)")
    process = rule.create(SPEC)
    after_one = process.next(process.initialize(), _updates(8)).state

    restored = RuleState.from_json(after_one.to_json())
    assert restored == after_one
    again = rule.create(SPEC)
    a = process.next(after_one, _updates(9))
    b = again.next(restored, _updates(9))
    assert a.measurements == b.measurements
    with pytest.raises(InvalidInput, match="saved rule state"):
        RuleState.from_json('{"values": []}')


def test_finds_the_dp_rule_inside_wrappers() -> None:
    dp = GaussianDP(noise_multiplier=1.1, clip=1.0, clients=10.0)
    assert find_dp(Zero(norm=10.0, inner=Clip(norm=3.0, inner=dp))) is dp
    assert find_dp(parse_rule("clip(norm=2.0) > mean")) is None
