"""The privacy ledger: epsilon from dp_accounting, caps enforced before a round, durable, shared."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from jurisfed.aggregation.differential_privacy import AdaptiveGaussianDP, GaussianDP
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.privacy.accounting import (
    epsilon,
    event_from_json,
    event_to_json,
    gaussian_event,
    release_event,
)
from jurisfed.privacy.ledger import Budget, PrivacyLedger
from jurisfed.privacy.report import render_report

DELTA = 1e-5
START = 1_800_000_000.0  # 2027-01-15, a fixed "now" for the ledger's clock


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += days * 86_400


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "state.sqlite", clock=clock)


def _epsilons(event: object, rounds: int) -> list[float]:
    """Epsilon after 1, 2, ... `rounds` releases, straight from dp_accounting's RDP accountant."""
    accountant = rdp_privacy_accountant.RdpAccountant()
    values = []
    for _ in range(rounds):
        accountant.compose(event)
        values.append(accountant.get_epsilon(DELTA))
    return values


def test_epsilon_grows_with_every_release_as_the_rdp_accountant_composes_them(ledger: PrivacyLedger) -> None:
    event = gaussian_event(1.1, sampling_rate=0.2, steps=5)
    expected = _epsilons(event, 6)

    spent = []
    for round_number in range(1, 7):
        ledger.record("EU", f"round-{round_number}", event)
        spent.append(ledger.spent("EU", delta=DELTA))

    assert spent == pytest.approx(expected, rel=1e-12)
    assert all(later > earlier for earlier, later in itertools.pairwise(spent))
    assert 0 < spent[0] < spent[-1] < 20


@pytest.mark.parametrize("between", [0.5, 0.0], ids=["cap between rounds 3 and 4", "cap equal to round 3"])
def test_a_cap_refuses_exactly_the_round_that_would_exceed_it(ledger: PrivacyLedger, between: float) -> None:
    event = gaussian_event(1.0)
    eps = _epsilons(event, 4)
    cap = eps[2] + between * (eps[3] - eps[2])

    ran = 0
    for round_number in range(1, 10):
        check = ledger.would_exceed("EU", event, cap, DELTA, 30)
        if check:
            break
        ledger.record("EU", f"round-{round_number}", event)
        ran += 1

    assert ran == 3
    assert check.exceeds
    assert check.releases_in_window == 3
    assert check.epsilon_spent == pytest.approx(eps[2], rel=1e-12)
    assert check.epsilon_after == pytest.approx(eps[3], rel=1e-12)
    assert "refused" in check.reason
    assert f"cap {cap:g}" in check.reason


def test_record_within_checks_and_records_in_one_step(ledger: PrivacyLedger) -> None:
    event = gaussian_event(1.0)
    eps = _epsilons(event, 3)
    budget = Budget(cap_epsilon=(eps[1] + eps[2]) / 2, delta=DELTA, period_days=30)

    outcomes = [ledger.record_within("EU", f"round-{n}", event, budget) for n in range(1, 4)]

    assert [check.recorded for check in outcomes] == [True, True, False]
    assert [check.exceeds for check in outcomes] == [False, False, True]
    assert [r.release_id for r in ledger.releases("EU")] == ["round-1", "round-2"]
    # A retry of a release already recorded is answered, not counted again.
    retry = ledger.record_within("EU", "round-2", event, budget)
    assert retry.recorded
    assert len(ledger.releases("EU")) == 2


def test_a_restarted_regional_keeps_the_spent_budget(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite"
    event = gaussian_event(0.9)
    before = PrivacyLedger(path, clock=clock)
    for round_number in range(1, 6):
        before.record("EU", f"round-{round_number}", event)
    spent = before.spent("EU", delta=DELTA)
    cap = _epsilons(event, 6)[5] - 1e-9
    del before

    after = PrivacyLedger(path, clock=clock)

    assert after.spent("EU", delta=DELTA) == spent
    assert [r.release_id for r in after.releases("EU")] == [f"round-{n}" for n in range(1, 6)]
    assert after.would_exceed("EU", event, cap, DELTA, 30).exceeds


def test_only_releases_inside_the_period_count_against_the_cap(ledger: PrivacyLedger, clock: Clock) -> None:
    event = gaussian_event(1.0)
    eps = _epsilons(event, 3)
    for round_number in range(1, 4):
        ledger.record("EU", f"round-{round_number}", event)
        clock.advance(10)

    # Now 30 days after the first release: it has left a 30-day window, the other two have not.
    check = ledger.would_exceed("EU", event, 100.0, DELTA, 30)
    assert check.releases_in_window == 2
    assert check.epsilon_spent == pytest.approx(eps[1], rel=1e-12)
    assert check.window_start == datetime.fromtimestamp(clock.now - 30 * 86_400, UTC)
    # Lifetime spending still counts all three.
    assert ledger.spent("EU", delta=DELTA) == pytest.approx(eps[2], rel=1e-12)
    since = datetime.fromtimestamp(START + 5 * 86_400, UTC)
    assert ledger.spent("EU", since, delta=DELTA) == pytest.approx(eps[1], rel=1e-12)


def test_jurisdictions_do_not_share_a_budget(ledger: PrivacyLedger) -> None:
    for round_number in range(1, 4):
        ledger.record("EU", f"round-{round_number}", gaussian_event(0.8))
    ledger.record("IN", "round-1", gaussian_event(0.8))

    assert ledger.spent("IN", delta=DELTA) == pytest.approx(_epsilons(gaussian_event(0.8), 1)[0])
    assert ledger.spent("US", delta=DELTA) == 0.0
    assert not ledger.would_exceed("US", gaussian_event(0.8), 10.0, DELTA, 30)
    assert ledger.would_exceed("EU", gaussian_event(0.8), 10.0, DELTA, 30)
    assert ledger.jurisdictions() == ["EU", "IN"]


def test_a_release_id_is_recorded_once(ledger: PrivacyLedger) -> None:
    first = ledger.record("EU", "round-1", gaussian_event(1.0), note="3 silos")
    again = ledger.record("EU", "round-1", gaussian_event(1.0))
    assert again == first
    assert len(ledger.releases("EU")) == 1
    with pytest.raises(WrongState, match="already recorded"):
        ledger.record("EU", "round-1", gaussian_event(2.0))


def test_a_release_without_privacy_exceeds_any_cap(ledger: PrivacyLedger) -> None:
    assert ledger.would_exceed("EU", dp_accounting.NonPrivateDpEvent(), 1e9, DELTA, 30).exceeds
    assert ledger.would_exceed("EU", gaussian_event(0.0), 1e9, DELTA, 30).exceeds
    assert not ledger.would_exceed("EU", dp_accounting.NoOpDpEvent(), 0.0, DELTA, 30).exceeds


@pytest.mark.parametrize(
    "event",
    [
        dp_accounting.SampledWithReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(1.0)),
        dp_accounting.UnsupportedDpEvent(),
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.LaplaceDpEvent(1.0)),
    ],
    ids=["with replacement", "unsupported", "sampled laplace"],
)
def test_an_event_the_accountant_cannot_account_for_is_refused(ledger: PrivacyLedger, event: object) -> None:
    with pytest.raises(InvalidInput):
        ledger.record("EU", "round-1", event)
    assert ledger.releases("EU") == []


def test_the_events_of_the_dp_rules_are_accounted_as_tff_reports_them() -> None:
    fixed = GaussianDP(noise_multiplier=1.2, clip=1.0, clients=10.0)
    adaptive = AdaptiveGaussianDP(noise_multiplier=1.2, clients=100.0)
    per_round = epsilon([fixed.dp_event()], DELTA)

    # Adaptive clipping spends the same as fixed at the same effective noise multiplier.
    assert epsilon([adaptive.dp_event()], DELTA) == pytest.approx(per_round, rel=1e-9)
    # Sampling the cohort amplifies privacy; more steps cost more.
    sampled = release_event(fixed.dp_event(), sampling_rate=0.1, steps=10)
    assert epsilon([sampled], DELTA) < epsilon([release_event(fixed.dp_event(), steps=10)], DELTA)


def test_stored_events_read_back_and_never_name_code_to_import() -> None:
    event = release_event(
        AdaptiveGaussianDP(noise_multiplier=1.0, clients=50.0).dp_event(), sampling_rate=0.5, steps=3
    )
    text = event_to_json(event)
    assert event_from_json(text) == event
    assert event_to_json(event_from_json(text)) == text
    for forged in [
        '{"type": "system", "command": 1}',
        '{"type": "GaussianDpEvent", "noise_multiplier": "x"}',
        "[]",
    ]:
        with pytest.raises(InvalidInput, match="not a stored privacy event"):
            event_from_json(forged)


def test_the_ledger_is_one_append_only_file_in_wal_mode(ledger: PrivacyLedger) -> None:
    ledger.record("EU", "round-1", gaussian_event(1.0))
    with sqlite3.connect(ledger.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE privacy_releases SET released_at = 0")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM privacy_releases")
    assert len(ledger.releases("EU")) == 1


_WRITER = """
import sys
from pathlib import Path
from jurisfed.privacy.accounting import gaussian_event
from jurisfed.privacy.ledger import Budget, PrivacyLedger

path, writer, count, cap = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ledger = PrivacyLedger(path)
event = gaussian_event(4.0)
recorded = 0
for i in range(count):
    if cap < 0:
        ledger.record("EU", f"{writer}-{i}", event)
        recorded += 1
    else:
        recorded += ledger.record_within("EU", f"{writer}-{i}", event, Budget(cap, 1e-5, 30)).recorded
print(recorded)
"""


def _run_writers(path: Path, processes: int, count: int, cap: float) -> list[int]:
    PrivacyLedger(path)  # create the file first, as a regional does at start-up
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"p{i}", str(count), str(cap)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        results.append(int(out))
    return results


def test_concurrent_writers_in_threads_and_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    ledger = PrivacyLedger(path)
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for i in range(10):
                ledger.record("EU", f"t{thread}-{i}", gaussian_event(4.0))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    by_processes = _run_writers(path, processes=3, count=20, cap=-1)
    for thread in threads:
        thread.join()

    assert errors == []
    assert by_processes == [20, 20, 20]
    releases = ledger.releases("EU")
    assert len(releases) == 100
    assert len({r.release_id for r in releases}) == 100
    assert ledger.spent("EU", delta=DELTA) == pytest.approx(_epsilons(gaussian_event(4.0), 100)[-1], rel=1e-9)


def test_concurrent_writers_never_spend_past_the_cap(tmp_path: Path) -> None:
    eps = _epsilons(gaussian_event(4.0), 8)
    cap = (eps[6] + eps[7]) / 2  # room for exactly 7 releases

    recorded = _run_writers(tmp_path / "state.sqlite", processes=4, count=5, cap=cap)

    assert sum(recorded) == 7
    assert len(PrivacyLedger(tmp_path / "state.sqlite").releases("EU")) == 7


def test_budgets_and_times_are_validated(ledger: PrivacyLedger) -> None:
    for bad in [
        (-1.0, DELTA, 30.0),
        (1.0, 0.0, 30.0),
        (1.0, 1.0, 30.0),
        (1.0, DELTA, 0.0),
        (float("nan"), DELTA, 1.0),
    ]:
        with pytest.raises(InvalidInput):
            Budget(*bad)
    with pytest.raises(InvalidInput, match="time zone"):
        ledger.spent("EU", datetime(2027, 1, 1))  # a naive time is the point
    with pytest.raises(InvalidInput, match="release id"):
        ledger.record("EU", "", gaussian_event(1.0))


def test_report_shows_spent_and_remaining_per_jurisdiction_over_time(
    ledger: PrivacyLedger, clock: Clock
) -> None:
    event = gaussian_event(1.0)
    eps = _epsilons(event, 4)
    for round_number in range(1, 5):
        ledger.record("EU", f"round-{round_number}", event)
        clock.advance(1)
    ledger.record("IN", "round-1", event)
    budgets = {"EU": Budget(eps[3] + 0.5, DELTA, 30), "US": Budget(2.0, DELTA, 30)}

    text = render_report(ledger, budgets, latest=3)

    eu = text[text.index("EU:") : text.index("IN:")]
    assert f"spent {eps[3]:.4g} in the last 30 days (4 releases), remaining 0.5" in eu
    assert "... 1 earlier releases" in eu
    assert eu.count("round-") == 3
    assert f"{eps[1]:.4g}" in eu  # epsilon after round 2, in the table
    assert "Gaussian z=1" in eu
    assert "IN: no budget configured" in text
    assert "US: cap epsilon 2 per 30 days" in text
    assert "lifetime epsilon 0 over 0 releases" in text

    clock.advance(40)  # every EU release has left the 30-day window
    later = render_report(ledger, budgets, jurisdictions=["EU"])
    assert "spent 0 in the last 30 days (0 releases)" in later
    assert f"lifetime epsilon {eps[3]:.4g} over 4 releases" in later
