"""`jurisfed experiment personalization --quick`: mixing weights from the grid, all jurisdictions."""

from __future__ import annotations

import json
from pathlib import Path

from jurisfed.cli import main
from jurisfed.personalization.interpolation import DEFAULT_GRID


def test_quick_personalization_reports_every_jurisdiction_every_round(tmp_path: Path) -> None:
    assert main(["experiment", "personalization", "--quick", "--out", str(tmp_path)]) == 0
    settings = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert set(settings) == {"Synthetic(1, 1)", "digits alpha=0.1"}
    assert settings["Synthetic(1, 1)"]["fedper"] is None  # logistic regression is all head
    assert len(settings["Synthetic(1, 1)"]["interpolation"]) == 10
    for method in ("interpolation", "fedper"):
        for figures in settings["digits alpha=0.1"][method].values():
            assert len(figures["personalized_accuracy_per_round_per_seed"][0]) == 3
    for jurisdiction in settings["digits alpha=0.1"]["interpolation"].values():
        assert all(a in DEFAULT_GRID for a in jurisdiction["mixing_weight_per_round_per_seed"][0])
    markdown = (tmp_path / "report.md").read_text()
    assert "interpolated" in markdown
    assert "FedPer" in markdown
