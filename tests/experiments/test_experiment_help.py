"""`jurisfed experiment --help` names every experiment and what it measures."""

from __future__ import annotations

import pytest

from jurisfed.cli import main


def test_help_lists_every_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("robustness", "privacy", "communication", "personalization"):
        assert name in out
    assert "report.html" in out


def test_each_experiment_explains_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["experiment", "robustness", "--help"])
    out = capsys.readouterr().out
    for option in ("--out", "--seeds", "--rounds", "--quick"):
        assert option in out
