"""`jurisfed experiment robustness|privacy|communication|personalization`: run one, write its report."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

EXPERIMENTS = {
    "robustness": "poisoning attacks (sign flip x10, scaling x100, label flip at 10/20/30 % malicious silos) "
    "against the plain mean and the robust regional (screen + quarantine + trimmed mean): final accuracy, "
    "detection rate and false positives (issue 7)",
    "privacy": "central DP at the regional (dp_gaussian at several noise multipliers, dp_adaptive): accuracy "
    "against the ledger's epsilon at delta 1e-5, and a jurisdiction refused exactly when its cap would be "
    "exceeded (issue 7)",
    "communication": "raw, int8, top-k-int8 with and without error feedback, top-k on the regional -> global "
    "hop: bytes per hop (protobuf framing included), compression ratio and accuracy on digits alpha 0.1 / 5 "
    "and Synthetic(1, 1) (issue 8)",
    "personalization": "interpolation (mixing weight chosen on the regional's validation split) and FedPer "
    "against the global model, per jurisdiction, on Synthetic(1, 1) and digits alpha 0.1 / 5 (issue 8)",
}
DEFAULT_ROUNDS = {"robustness": 15, "privacy": 15, "communication": 30, "personalization": 20}
QUICK_ROUNDS = 3
DEFAULT_SEEDS = "0,1,2"


def add_experiment_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="run an experiment of the tiers' components in one process and write its report",
        description="Run one experiment with the tiers' own components in one process (silo.trainer "
        "training, jurisfed.aggregation rules, screen and quarantine, the privacy ledger, codecs and "
        "the wire's chunks, measured as protobuf messages; no gRPC) and write OUT/report.md, "
        "OUT/report.html (self-contained, SVG plots) and OUT/results.json. Progress lines go to stdout.",
    )
    kinds = experiment.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, description in EXPERIMENTS.items():
        parser = kinds.add_parser(
            name, help=description.split(":")[0].replace("%", "%%"), description=description
        )
        parser.add_argument("--out", type=Path, default=Path(f"experiment-{name}"), help="report folder")
        parser.add_argument(
            "--seeds",
            default=DEFAULT_SEEDS,
            help=f"comma-separated seeds; figures are means (default {DEFAULT_SEEDS})",
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=None,
            help=f"rounds per run (default {DEFAULT_ROUNDS[name]}; {QUICK_ROUNDS} with --quick)",
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="a small version (fewer silos, arms and tasks; one seed unless --seeds is given), "
            "in well under a minute",
        )
        parser.set_defaults(run=_run)


def _runner(name: str) -> Callable[..., object]:
    # Imported on use: the experiments import TensorFlow (8-12 s), other commands must not wait for it.
    if name == "robustness":
        from jurisfed.experiments.robustness import run_robustness  # noqa: PLC0415

        return run_robustness
    if name == "privacy":
        from jurisfed.experiments.privacy import run_privacy  # noqa: PLC0415

        return run_privacy
    if name == "communication":
        from jurisfed.experiments.communication import run_communication  # noqa: PLC0415

        return run_communication
    from jurisfed.experiments.personalization import run_personalization  # noqa: PLC0415

    return run_personalization


def _run(args: argparse.Namespace) -> int:
    name = args.experiment
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        print(
            f"jurisfed experiment: --seeds must be integers separated by commas, got {args.seeds!r}",
            file=sys.stderr,
        )
        return 2
    if args.quick and args.seeds == DEFAULT_SEEDS:
        seeds = seeds[:1]
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS[name])
    if not seeds or rounds < 1:
        print("jurisfed experiment: at least one seed and one round are needed", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(f"[{name}] {line}", flush=True)

    from jurisfed.experiments.report import Report, write_report  # noqa: PLC0415
    from jurisfed.experiments.runs import ExperimentPlan  # noqa: PLC0415

    began = time.monotonic()
    say(f"seeds {', '.join(map(str, seeds))}; {rounds} rounds per run{'; quick' if args.quick else ''}")
    with tempfile.TemporaryDirectory(prefix=f"jurisfed-{name}-") as scratch:
        plan = ExperimentPlan(seeds, rounds, args.quick, Path(scratch), say)
        report = _runner(name)(plan)
    assert isinstance(report, Report)
    written = write_report(report, args.out)
    say(f"done in {time.monotonic() - began:.0f} s; wrote {', '.join(str(p) for p in written[:3])}")
    return 0
