"""`jurisfed experiment robustness --quick`: the report is written and its numbers hang together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jurisfed.cli import main


def test_quick_robustness_writes_a_report_with_detection_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["experiment", "robustness", "--quick", "--out", str(tmp_path)]) == 0
    assert "[robustness]" in capsys.readouterr().out  # progress lines
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert results["rounds"] == 3
    assert results["seeds"] == [0]
    assert "sign flip x10 at 20 %, robust" in runs
    assert "clean, plain mean" in runs
    for label, figures in runs.items():
        assert len(figures["accuracy_per_round"]) == 3
        if label.endswith(", robust") and not label.startswith("clean"):
            assert 0.0 <= figures["detection_rate"] <= 1.0
            assert 0.0 <= figures["false_positive_rate"] <= 1.0
            # Every quarantine the screen opened was closed by the operator's re-admission.
            assert figures["quarantines_opened"] == figures["readmissions"]
    # A scaled update is 100 times the median norm: the screen flags every one of them.
    assert runs["scaling x100 at 20 %, robust"]["detection_rate"] == 1.0
    markdown = (tmp_path / "report.md").read_text()
    assert "in-process harness" in markdown
    assert "detection rate" in markdown
    assert (tmp_path / "report.html").read_text().count("<svg") == 2
