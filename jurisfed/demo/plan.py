"""The round plan and the probe set `jurisfed demo` gives its global aggregator.

The plan is deploy/plans/demo.yaml, fitted to the run's settings: its rounds, its jurisdictions
and their silo counts, and its deadline (the file's 100/110/120 s scaled to it). The probe set,
on which the global checks every candidate before a commit, is every other example of the
held-out set: data a global may hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jurisfed.demo.partition import load_split, write_split
from jurisfed.round_plan import Cohort, Deadlines, Quorum, RoundPlan, load_plan

DEMO_PLAN = Path(__file__).resolve().parents[2] / "deploy" / "plans" / "demo.yaml"


def demo_plan(
    rounds: int, round_deadline_s: float, jurisdictions: Sequence[str], silo_counts: Sequence[int]
) -> RoundPlan:
    """deploy/plans/demo.yaml for this run: a round commits with every jurisdiction but one."""
    plan = load_plan(DEMO_PLAN, environ={})
    scale = round_deadline_s / plan.deadlines.global_s
    return dataclasses.replace(
        plan,
        rounds=rounds,
        cohort=Cohort(tuple(jurisdictions), min(silo_counts), max(silo_counts)),
        quorum=Quorum(max(1, len(jurisdictions) - 1)),
        deadlines=Deadlines(
            plan.deadlines.silo_s * scale, plan.deadlines.regional_s * scale, round_deadline_s
        ),
    )


def write_probe_set(test_path: Path, probe_path: Path) -> Path:
    """Every other example of the held-out set in `test_path`, written to `probe_path`."""
    features, labels = load_split(test_path)
    write_split(probe_path, np.ascontiguousarray(features[::2]), np.ascontiguousarray(labels[::2]))
    return probe_path
