"""Per-update diagnostics catch sign-flipped and scaled updates among honest ones; quarantine records it."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from jurisfed.aggregation.diagnostics import OutlierRule, UpdateScreen, screen_batch
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.errors import InvalidInput, NotFound
from jurisfed.privacy.accounting import gaussian_event
from jurisfed.privacy.ledger import PrivacyLedger
from jurisfed.tensors import ModelSpec, TensorSpec, Weights

SPEC = ModelSpec("sim", (TensorSpec("dense/kernel", (40, 50)), TensorSpec("dense/bias", (50,))))
SEEDS = range(6)


class Federation:
    """Honest silos share a true direction, each skewed by its data cluster, plus its own noise."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.truth = self._random()
        self.clusters = [self._random() for _ in range(3)]

    def _random(self) -> Weights:
        return {t.name: self.rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}

    def honest(self, silo: int) -> Weights:
        scale = self.rng.uniform(0.5, 1.5)  # silos of different sizes, learning rates
        cluster, noise = self.clusters[silo % 3], self._random()
        return {
            name: (scale * (self.truth[name] + 0.7 * cluster[name] + 0.8 * noise[name])).astype(np.float32)
            for name in self.truth
        }

    def sign_flipped(self, silo: int) -> Weights:
        return {name: (-10.0 * values).astype(np.float32) for name, values in self.honest(silo).items()}

    def scaled(self, silo: int) -> Weights:
        return {name: (100.0 * values).astype(np.float32) for name, values in self.honest(silo).items()}

    def round(self, honest: int) -> dict[str, Weights]:
        """One round's updates: `honest` honest silos, then the two attackers placed among them."""
        updates = {f"silo-{i}": self.honest(i) for i in range(honest)}
        order = list(updates)
        order.insert(4, "flip")
        order.insert(8, "scale")
        updates["flip"], updates["scale"] = self.sign_flipped(100), self.scaled(101)
        return {sender: updates[sender] for sender in order}


def _mean(updates: list[Weights]) -> Weights:
    return {name: np.mean([u[name] for u in updates], axis=0).astype(np.float32) for name in updates[0]}


@pytest.mark.parametrize("seed", SEEDS)
def test_the_running_screen_flags_the_attackers_and_no_honest_silo(seed: int) -> None:
    updates = Federation(seed).round(honest=12)
    screen = UpdateScreen(SPEC)

    diagnoses = {sender: screen.screen(sender, update) for sender, update in updates.items()}

    assert {s for s, d in diagnoses.items() if d.outlier} == {"flip", "scale"}
    flip, scale = diagnoses["flip"], diagnoses["scale"]
    assert flip.cosine is not None
    assert flip.cosine < 0
    assert any("cosine" in reason for reason in flip.reasons)
    assert scale.norm_ratio is not None
    assert scale.norm_ratio > 30
    assert scale.cosine is not None
    assert scale.cosine > 0  # scaled, not turned: only its norm gives it away
    assert screen.admitted == 12
    assert max(d.score for s, d in diagnoses.items() if s not in ("flip", "scale")) < 1


@pytest.mark.parametrize("seed", SEEDS)
def test_with_last_rounds_aggregate_attackers_arriving_first_are_flagged(seed: int) -> None:
    federation = Federation(seed)
    last_round = [federation.honest(i) for i in range(12)]
    screen = UpdateScreen(
        SPEC,
        prior=_mean(last_round),
        norms=[math.sqrt(sum(float(np.sum(v * v)) for v in u.values())) for u in last_round],
    )
    updates = federation.round(honest=12)
    attackers_first = {s: updates[s] for s in ("flip", "scale")} | updates

    diagnoses = {sender: screen.screen(sender, update) for sender, update in attackers_first.items()}

    assert {s for s, d in diagnoses.items() if d.outlier} == {"flip", "scale"}


@pytest.mark.parametrize("seed", SEEDS)
def test_screening_a_whole_round_flags_the_attackers_whatever_the_order(seed: int) -> None:
    updates = Federation(seed).round(honest=12)
    shuffled = dict(reversed(list(updates.items())))

    for round_updates in (updates, shuffled):
        diagnoses = screen_batch(SPEC, round_updates)
        assert {s for s, d in diagnoses.items() if d.outlier} == {"flip", "scale"}
        assert max(d.score for s, d in diagnoses.items() if s.startswith("silo")) < 1


def test_no_update_is_judged_before_there_is_a_reference() -> None:
    federation = Federation(7)
    screen = UpdateScreen(SPEC, OutlierRule(min_reference=3))

    first = [screen.screen(f"silo-{i}", federation.scaled(i)) for i in range(3)]

    assert [(d.norm_ratio, d.cosine, d.score, d.outlier) for d in first] == [(None, None, 0.0, False)] * 3
    assert screen.screen("silo-3", federation.honest(3)).norm_ratio is not None
    assert not screen_batch(SPEC, {"a": federation.honest(0), "b": federation.scaled(1)})["b"].outlier


def test_the_score_is_the_documented_rule() -> None:
    rule = OutlierRule(max_norm_ratio=4.0, min_cosine=0.0, min_reference=1)
    base = {"dense/kernel": np.zeros((40, 50), np.float32), "dense/bias": np.zeros(50, np.float32)}
    unit = {**base, "dense/bias": np.eye(50, dtype=np.float32)[0]}
    screen = UpdateScreen(SPEC, rule)
    screen.admit(unit)

    # Twice the norm, in a direction at 120 degrees: cosine -0.5.
    turned = {
        **base,
        "dense/bias": 2 * (np.eye(50)[0] * -0.5 + np.eye(50)[1] * math.sqrt(3) / 2).astype(np.float32),
    }
    diagnosis = screen.inspect("silo", turned)

    assert diagnosis.norm_ratio == pytest.approx(2.0)
    assert diagnosis.cosine == pytest.approx(-0.5)
    assert diagnosis.score == pytest.approx(max(2.0 / 4.0, (1 - -0.5) / (1 - 0.0)))
    assert diagnosis.reasons == ("cosine -0.500 to the aggregate is below 0",)


def test_an_outlier_is_not_folded_into_the_reference() -> None:
    federation = Federation(8)
    screen = UpdateScreen(SPEC)
    for i in range(5):
        screen.screen(f"silo-{i}", federation.honest(i))
    probe = federation.honest(5)
    before = screen.inspect("probe", probe)

    assert screen.screen("scale", federation.scaled(6)).outlier
    assert screen.screen("flip", federation.sign_flipped(7)).outlier

    assert screen.inspect("probe", probe) == before
    assert len(screen.norms) == 5


def test_an_update_holding_nan_is_an_outlier_and_is_never_admitted() -> None:
    update = Federation(9).honest(0)
    update["dense/bias"][3] = np.nan
    screen = UpdateScreen(SPEC)

    diagnosis = screen.screen("silo", update)

    assert diagnosis.outlier
    assert diagnosis.score == math.inf
    assert diagnosis.reason == "holds NaN or infinity"
    with pytest.raises(InvalidInput):
        screen.admit(update)
    assert screen_batch(SPEC, {"silo": update})["silo"].outlier


@pytest.mark.parametrize(
    "settings",
    [
        {"max_norm_ratio": 1.0},
        {"min_cosine": 1.0},
        {"min_cosine": -1.5},
        {"min_reference": 0},
        {"norm_history": 2},
    ],
)
def test_a_meaningless_rule_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        OutlierRule(**settings)  # type: ignore[arg-type]


# --- quarantine ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_quarantine_and_readmission_record_reason_times_and_remediation(tmp_path: Path) -> None:
    clock = Clock()
    registry = QuarantineRegistry(tmp_path / "state.sqlite", clock=clock)
    diagnosis = screen_batch(SPEC, Federation(10).round(honest=6))["scale"]

    entry = registry.quarantine("scale", 3, diagnosis.reason, diagnosis.score)
    assert registry.is_quarantined("scale")
    assert not registry.is_quarantined("silo-0")
    assert entry.active
    assert entry.round == 3
    assert "times the median" in entry.reason
    assert entry.score == pytest.approx(diagnosis.score)
    assert entry.quarantined_at.timestamp() == clock.now

    clock.now += 3_600
    done = registry.readmit("scale", by="ops@eu", note="model replaced by the silo's own team")

    assert not registry.is_quarantined("scale")
    assert done.readmitted_by == "ops@eu"
    assert done.time_to_remediation_s == 3_600
    assert registry.history("scale") == [done]


def test_quarantining_an_open_case_again_keeps_the_first_entry(tmp_path: Path) -> None:
    registry = QuarantineRegistry(tmp_path / "state.sqlite")
    first = registry.quarantine("flip", 1, "cosine -0.9 to the aggregate is below 0", 1.9)
    again = registry.quarantine("flip", 2, "norm 10 times the median", 2.5)
    assert again == first
    assert registry.active() == [first]


def test_readmission_needs_an_open_case_and_an_operator(tmp_path: Path) -> None:
    registry = QuarantineRegistry(tmp_path / "state.sqlite")
    with pytest.raises(NotFound, match="not quarantined"):
        registry.readmit("silo-1", by="ops@eu")
    registry.quarantine("silo-1", 1, "holds NaN or infinity", math.inf)
    with pytest.raises(InvalidInput, match="operator"):
        registry.readmit("silo-1", by="")
    assert registry.is_quarantined("silo-1")


def test_counts_quarantines_readmissions_and_time_to_remediation(tmp_path: Path) -> None:
    clock = Clock()
    registry = QuarantineRegistry(tmp_path / "state.sqlite", clock=clock)
    for hours, participant in [(1, "a"), (3, "b"), (5, "a")]:
        registry.quarantine(participant, hours, "norm too large", 5.0)
        clock.now += hours * 3_600
        registry.readmit(participant, by="ops")
    registry.quarantine("c", 9, "norm too large", 5.0)

    counts = registry.counts()

    assert (counts.quarantined, counts.readmitted, counts.active) == (4, 3, 1)
    assert counts.median_time_to_remediation_s == 3 * 3_600
    assert [e.participant for e in registry.history()] == ["a", "b", "a", "c"]


def test_the_registry_shares_the_state_file_with_the_ledger_and_survives_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    QuarantineRegistry(path).quarantine("flip", 4, "cosine below 0", 3.0)
    PrivacyLedger(path).record("EU", "round-4", gaussian_event(1.0))

    registry, ledger = QuarantineRegistry(path), PrivacyLedger(path)

    assert registry.is_quarantined("flip")
    assert len(ledger.releases("EU")) == 1
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"quarantine", "privacy_releases"} <= tables


def test_concurrent_quarantines_of_one_participant_open_one_case(tmp_path: Path) -> None:
    registry = QuarantineRegistry(tmp_path / "state.sqlite")
    entries = []

    def report(round_number: int) -> None:
        entries.append(registry.quarantine("flip", round_number, "cosine below 0", 2.0))

    threads = [threading.Thread(target=report, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(entries) == 8
    assert len({entry.id for entry in entries}) == 1
    assert len(registry.history("flip")) == 1
