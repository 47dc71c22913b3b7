"""`jurisfed quarantine list|readmit` and `jurisfed privacy report`: a tier's safeguards, read and
remedied from its state directory, on the tier's host.

Both work on the tier's state file (state.sqlite), which the running tier shares: a
re-admission is written to the quarantine registry and the running regional (or global) acts
on it within a second, audits it and records its time to remediation. The privacy report reads
the privacy ledger the regional keeps there; the budget comes from the regional's policy file
(its DP cap on aggregates to the global) and/or the round plan's cap given on the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from jurisfed.aggregation.quarantine import QuarantineEntry, QuarantineRegistry
from jurisfed.auth.identity import GLOBAL_JURISDICTION
from jurisfed.errors import ConfigError, JurisfedError
from jurisfed.policy.engine import requirements
from jurisfed.policy.loader import read_policy
from jurisfed.policy.model import Artifact, Endpoint, Tier
from jurisfed.privacy.ledger import Budget, PrivacyLedger
from jurisfed.privacy.report import render_report

STATE_FILE = "state.sqlite"  # the tiers' state file in their state_dir
PLAN_PERIOD_DAYS = 365.0  # as the regional counts a round plan's privacy.max_epsilon


def add_quarantine_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quarantine = commands.add_parser(
        "quarantine",
        help="participants quarantined for outlier updates: list them, re-admit one",
        description="Silos (at a regional) or jurisdictions (at the global) whose update was an outlier "
        "are quarantined: their updates are refused until an operator re-admits them. Run on the tier's "
        "host, against its state directory; the running tier acts on a re-admission within a second.",
    )
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="who is quarantined, since when and why")
    listing.add_argument("--all", action="store_true", help="also every past quarantine and re-admission")
    readmit = actions.add_parser("readmit", help="re-admit a quarantined participant")
    readmit.add_argument("participant", help="the silo id (at a regional) or jurisdiction (at the global)")
    readmit.add_argument("--by", required=True, help="who re-admits it (recorded and audited)")
    readmit.add_argument("--note", default="", help="why it may take part again (recorded and audited)")
    for action, handler in ((listing, _list), (readmit, _readmit)):
        action.add_argument("--state-dir", type=Path, required=True, help="the tier's state_dir")
        action.set_defaults(run=lambda args, handler=handler: _guarded(handler, args))


def add_privacy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    privacy = commands.add_parser(
        "privacy",
        help="differential privacy spent per jurisdiction (privacy report)",
        description="What a regional's DP releases have spent of its jurisdiction's budget.",
    )
    actions = privacy.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report",
        help="spent and remaining epsilon per jurisdiction, and every release over time",
        description="Spent and remaining epsilon per jurisdiction over its budget period, lifetime "
        "epsilon and the latest releases, from the privacy ledger in a regional's state directory. "
        "The budget is the DP cap of --policy (aggregates to the global) and/or --max-epsilon.",
    )
    report.add_argument("--state-dir", type=Path, required=True, help="the regional's state_dir")
    report.add_argument("--policy", type=Path, help="the regional's residency policy file (its DP cap)")
    report.add_argument("--max-epsilon", type=float, help="the round plan's privacy.max_epsilon")
    report.add_argument("--delta", type=float, default=1e-5, help="the round plan's privacy.delta")
    report.add_argument("--latest", type=int, default=10, help="releases shown per jurisdiction")
    report.set_defaults(run=lambda args: _guarded(_report, args))


def _guarded(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        code = handler(args)
    except (JurisfedError, ConfigError) as error:
        print(f"jurisfed: {error}", file=sys.stderr)
        return 1
    return code


def _state_file(state_dir: Path) -> Path:
    path = state_dir / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{state_dir} holds no tier state ({STATE_FILE}); give the tier's state_dir")
    return path


def _list(args: argparse.Namespace) -> int:
    registry = QuarantineRegistry(_state_file(args.state_dir))
    entries = registry.history() if args.all else registry.active()
    counts = registry.counts()
    median = counts.median_time_to_remediation_s
    print(
        f"{counts.active} quarantined now; {counts.quarantined} quarantines, "
        f"{counts.readmitted} re-admissions"
        + (f", median time to remediation {median:.0f} s" if median is not None else "")
    )
    for entry in entries:
        print(_line(entry))
    return 0


def _readmit(args: argparse.Namespace) -> int:
    entry = QuarantineRegistry(_state_file(args.state_dir)).readmit(args.participant, args.by, args.note)
    print(f"re-admitted {entry.participant} after {entry.time_to_remediation_s or 0.0:.0f} s (by {args.by})")
    return 0


def _line(entry: QuarantineEntry) -> str:
    since = f"{entry.quarantined_at:%Y-%m-%d %H:%M:%S} UTC"
    text = f"{entry.participant}: quarantined in round {entry.round} at {since}, score {entry.score:.3g}: "
    text += entry.reason
    if entry.readmitted_at is not None:
        text += f"; re-admitted at {entry.readmitted_at:%Y-%m-%d %H:%M:%S} UTC by {entry.readmitted_by}"
        text += f" ({entry.readmission_note})" if entry.readmission_note else ""
    return text


def _report(args: argparse.Namespace) -> int:
    ledger = PrivacyLedger(_state_file(args.state_dir))
    budgets: dict[str, Budget] = {}
    if args.policy is not None:
        policy = read_policy(args.policy)
        source = Endpoint(Tier.REGIONAL, policy.jurisdiction, policy.hosting_location)
        destination = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, None)
        limit = requirements(policy, Artifact.AGGREGATE, source, destination).differential_privacy
        if limit is not None:
            budgets[policy.jurisdiction] = Budget(limit.max_epsilon, limit.max_delta, limit.period_days)
        if args.max_epsilon is not None:
            plan = Budget(args.max_epsilon, args.delta, PLAN_PERIOD_DAYS)
            current = budgets.get(policy.jurisdiction)
            if current is None or plan.cap_epsilon < current.cap_epsilon:
                budgets[policy.jurisdiction] = plan
    elif args.max_epsilon is not None:
        for jurisdiction in ledger.jurisdictions():
            budgets[jurisdiction] = Budget(args.max_epsilon, args.delta, PLAN_PERIOD_DAYS)
    print(render_report(ledger, budgets, latest=args.latest), end="")
    return 0
