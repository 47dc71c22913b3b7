"""`jurisfed experiment privacy --quick`: epsilon from the ledger, and the cap stops a jurisdiction."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

from jurisfed.cli import main


def test_quick_privacy_accounts_every_round_and_stops_at_the_cap(tmp_path: Path) -> None:
    assert main(["experiment", "privacy", "--quick", "--rounds", "4", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    gaussian = [label for label in runs if label.startswith("dp_gaussian z=") and "capped" not in label]
    assert len(gaussian) >= 2
    finals = {}
    for label in gaussian:
        spent = runs[label]["epsilon_after_each_round"]
        assert len(spent) == 4
        assert all(b > a for a, b in itertools.pairwise(spent))
        finals[float(label.split("=")[1])] = spent[-1]
    # More noise, less epsilon.
    noises = sorted(finals)
    assert all(finals[a] > finals[b] for a, b in itertools.pairwise(noises))

    capped = next(figures for label, figures in runs.items() if "capped" in label)
    assert capped["stopped_at_round"] == 3  # cap = epsilon of ceil(4 / 2) releases, plus 1 %
    spent_in = capped["epsilon_per_round"]["IN"]
    assert spent_in[1] <= capped["cap_epsilon"]
    assert spent_in[2] == spent_in[3] == spent_in[1]  # refused rounds spend nothing
    assert all(refusal == "" for refusal in capped["refusals"][:2])
    assert all("would be exceeded" in refusal for refusal in capped["refusals"][2:])
    assert math.isclose(capped["epsilon_per_round"]["EU"][1], spent_in[1])
    assert capped["epsilon_per_round"]["EU"][3] > capped["cap_epsilon"]  # the others went on
