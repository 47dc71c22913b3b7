"""`jurisfed quarantine list|readmit` and `jurisfed privacy report` against a tier's state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.cli import main
from jurisfed.privacy.accounting import epsilon, gaussian_event
from jurisfed.privacy.ledger import PrivacyLedger

EU_POLICY = Path(__file__).parents[2] / "deploy" / "policies" / "eu.yaml"


def test_an_operator_lists_and_readmits_a_quarantined_silo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    QuarantineRegistry(tmp_path / "state.sqlite").quarantine(
        "hospital-b", 4, "cosine -1.000 to the aggregate", 7.5
    )
    assert main(["quarantine", "list", "--state-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "1 quarantined now; 1 quarantines, 0 re-admissions" in shown
    assert "hospital-b: quarantined in round 4" in shown
    assert "score 7.5: cosine -1.000 to the aggregate" in shown

    readmit = ["quarantine", "readmit", "hospital-b", "--by", "alice", "--note", "clean data"]
    assert main([*readmit, "--state-dir", str(tmp_path)]) == 0
    assert "re-admitted hospital-b" in capsys.readouterr().out
    assert main([*readmit, "--state-dir", str(tmp_path)]) == 1
    assert "hospital-b is not quarantined" in capsys.readouterr().err
    assert main(["quarantine", "list", "--all", "--state-dir", str(tmp_path)]) == 0
    assert "by alice (clean data)" in capsys.readouterr().out


def test_a_command_against_a_directory_without_tier_state_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quarantine", "list", "--state-dir", str(tmp_path / "nothing")]) == 1
    assert "holds no tier state (state.sqlite)" in capsys.readouterr().err


def test_the_privacy_report_shows_the_policy_cap_spent_and_remaining(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = PrivacyLedger(tmp_path / "state.sqlite")
    for number in (1, 2):
        ledger.record("EU", f"round-{number}", gaussian_event(3.0))
    spent = epsilon([gaussian_event(3.0)] * 2, 1e-5)
    assert main(["privacy", "report", "--state-dir", str(tmp_path), "--policy", str(EU_POLICY)]) == 0
    shown = capsys.readouterr().out
    assert "EU: cap epsilon 3 per 90 days at delta 1e-05" in shown
    assert f"spent {spent:.4g} in the last 90 days (2 releases), remaining {3 - spent:.4g}" in shown
    assert "round-2" in shown
