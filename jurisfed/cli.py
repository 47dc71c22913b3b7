"""The `jurisfed` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jurisfed.audit.cli import add_audit_commands
from jurisfed.auth.pki_cli import add_pki_commands
from jurisfed.errors import ConfigError
from jurisfed.experiments.cli import add_experiment_commands
from jurisfed.operator.cli import add_round_commands
from jurisfed.operator.safeguards_cli import add_privacy_commands, add_quarantine_commands
from jurisfed.policy.cli import add_policy_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jurisfed",
        description="jurisfed: federated learning across jurisdictions. Silo trainers train beside their "
        "data, one regional aggregator per jurisdiction aggregates its silos, a global aggregator "
        "combines the jurisdictions; raw data never moves.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    add_round_commands(commands)
    add_policy_commands(commands)
    add_audit_commands(commands)
    add_pki_commands(commands)
    add_quarantine_commands(commands)
    add_privacy_commands(commands)
    add_experiment_commands(commands)
    args = parser.parse_args(argv)
    return int(args.run(args))


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from jurisfed.demo.partition import (
        DEFAULT_ALPHA,
        DEFAULT_SEED,
        DEMO_JURISDICTIONS,
        DEMO_ROUNDS,
        DEMO_SILOS_PER_JURISDICTION,
    )

    demo = commands.add_parser(
        "demo",
        help="run a whole federation on this machine and report accuracy and bytes per round",
        description="Start 1 global aggregator, a regional aggregator per jurisdiction and its silos as "
        "separate processes talking gRPC over mutual TLS on localhost; train on scikit-learn's "
        "digits data split with a different label skew per jurisdiction; print a table per round "
        "(global and personalized accuracy per jurisdiction, bytes per hop, wall time) and write "
        "it to OUT/results.json. Logs of every process are in OUT/logs.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output directory (default demo-out/)"
    )
    demo.add_argument(
        "--rounds", type=int, default=DEMO_ROUNDS, help=f"rounds to run (default {DEMO_ROUNDS})"
    )
    demo.add_argument(
        "--jurisdictions",
        default=",".join(DEMO_JURISDICTIONS),
        help=f"comma-separated jurisdiction codes (default {','.join(DEMO_JURISDICTIONS)})",
    )
    demo.add_argument(
        "--silos",
        type=int,
        default=DEMO_SILOS_PER_JURISDICTION,
        help=f"silos per jurisdiction, raised where a jurisdiction's policy requires a larger cohort "
        f"(default {DEMO_SILOS_PER_JURISDICTION})",
    )
    demo.add_argument(
        "--policies",
        type=Path,
        default=None,
        help="directory of signed residency policies: global.yaml, one <jurisdiction>.yaml each "
        "and keys/ with the approvers' public keys (default: the example policies in deploy/policies)",
    )
    demo.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"Dirichlet label skew; smaller is more skewed (default {DEFAULT_ALPHA})",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of data split and training (default {DEFAULT_SEED})",
    )
    demo.add_argument(
        "--round-deadline", type=float, default=120.0, help="seconds a round stays open (default 120)"
    )
    demo.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from jurisfed.demo.fleet import FleetError
    from jurisfed.demo.runner import DEFAULT_POLICIES, DemoSettings, run_demo

    settings = DemoSettings(
        out_dir=args.out,
        rounds=args.rounds,
        jurisdictions=tuple(j.strip().upper() for j in args.jurisdictions.split(",") if j.strip()),
        silos_per_jurisdiction=args.silos,
        alpha=args.alpha,
        seed=args.seed,
        round_deadline_s=args.round_deadline,
        start_timeout_s=300.0,
        policies=args.policies.resolve() if args.policies else DEFAULT_POLICIES,
    )
    if settings.rounds < 1 or settings.silos_per_jurisdiction < 1 or not settings.jurisdictions:
        print(
            "jurisfed demo: --rounds and --silos must be at least 1 and --jurisdictions non-empty",
            file=sys.stderr,
        )
        return 2

    def say(line: str) -> None:
        print(f"[demo] {line}", flush=True)

    try:
        results = run_demo(settings, say)
    except (ConfigError, FleetError) as error:
        print(f"jurisfed demo failed: {error}", file=sys.stderr)
        return 1
    print()
    print(results.table())
    path = settings.out_dir / "results.json"
    results.write_json(path)
    print(f"\nresults written to {path}; logs in {settings.out_dir / 'logs'}")
    return 0
