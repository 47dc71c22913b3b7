"""What every experiment shares: its plan (seeds, rounds, scratch folder), progress lines, figures' maths.

The header every report opens with says what this is: the in-process harness of the tiers'
own components, not the gRPC deployment, and with which seeds and rounds it ran.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jurisfed.experiments.federation import FederationRun, FederationSettings, run_federation
from jurisfed.experiments.tasks import Task

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExperimentPlan:
    seeds: tuple[int, ...]
    rounds: int
    quick: bool
    workdir: Path  # scratch: data files and every run's SQLite state
    progress: Progress

    def header(self, what: str) -> tuple[str, ...]:
        mode = "quick (reduced) version" if self.quick else "full version"
        return (
            f"{what}",
            "How it ran: the in-process harness of the tiers' own components (jurisfed.experiments."
            "federation): silo training is silo.trainer.train (TensorFlow) on silo.data.LocalDataset, "
            "regional aggregation is jurisfed.aggregation (parse_rule(...).create(spec), "
            "diagnostics.screen_batch, QuarantineRegistry), privacy is jurisfed.privacy.ledger."
            "PrivacyLedger (SQLite), bytes are the tiers' protobuf stream messages (TensorChunk in "
            "UpdateMessage / AggregateMessage, signed header included) counted by jurisfed.wire.metering."
            "Meter with gRPC framing, decoded by jurisfed.wire.chunks.TensorAssembler. No gRPC channel, "
            "TLS or separate processes: one Python process.",
            f"Seeds {', '.join(str(s) for s in self.seeds)}; {self.rounds} rounds per run; {mode}. "
            "Figures are means over the seeds unless a column says otherwise.",
        )


def run(
    plan: ExperimentPlan, task: Task, settings: FederationSettings, *, seed: int, label: str, rounds: int = 0
) -> FederationRun:
    """One federation run in its own state folder, with a progress line when it ends."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir=plan.workdir, prefix="state-") as state_dir:
        result = run_federation(
            task, settings, seed=seed, rounds=rounds or plan.rounds, state_dir=Path(state_dir)
        )
    last = result.records[-1]
    served = [j.personalized_accuracy for j in last.jurisdictions if j.personalized_accuracy is not None]
    personalized = f" | personalized {100 * mean(served):.1f} % (mean of jurisdictions)" if served else ""
    plan.progress(
        f"{label} | seed {seed} | {len(result.records)} rounds | global accuracy "
        f"{100 * last.global_accuracy:.1f} %{personalized} | {time.monotonic() - began:.1f} s"
    )
    return result


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def stdev(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def points(fraction: float) -> str:
    """An accuracy (0..1) in percentage points, one decimal."""
    return f"{100 * fraction:.1f}"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
