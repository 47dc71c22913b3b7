"""`jurisfed demo` as a user runs it: the real command, its exit code and its results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_trains_a_good_global_model_and_better_personalized_ones(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    finished = subprocess.run(
        [sys.executable, "-m", "jurisfed", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "round 10/10 committed" in finished.stdout
    assert "pers@EU" in finished.stdout  # the per-round table

    results = json.loads((out / "results.json").read_text())
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 11))
    assert all(r["outcome"] == "committed" for r in rounds)
    last = rounds[-1]
    assert last["global_accuracy"] >= 0.90
    for jurisdiction in ("EU", "IN", "US"):
        assert (
            last["personalized_accuracy"][jurisdiction]
            >= last["global_accuracy_by_jurisdiction"][jurisdiction]
        )
    crossing = last["bytes"]["regional_to_global"]
    assert crossing["sent"] * 3.9 <= crossing["float32_equivalent"]
    assert {p.name for p in (out / "logs").iterdir()} >= {"global.log", "regional-EU.log", "us-silo-3.log"}
