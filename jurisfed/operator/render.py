"""What `jurisfed round status|watch|history` print: plain lines an ML engineer can read in a terminal."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from jurisfed.operator.client import FederationStatus, RegionalView
from jurisfed.rounds import CheckResult, LeftOutEntry, PlanProgress, RoundEntry, RoundHistory, RoundSummary
from jurisfed.store.history import outcome


def render_status(status: FederationStatus) -> str:
    head = (
        f"federation: {status.state.value}, round {status.current_round}, "
        f"jurisdictions {', '.join(status.jurisdictions) or 'none registered'}"
    )
    lines = [head]
    if status.plan is not None:
        lines.append(render_plan(status.plan))
    lines.append(render_rounds(status.rounds))
    lines += [
        f"  round {r.round}: {r.jurisdiction} declined by its policy, rule {r.rule_id}: {r.reason}"
        for r in status.refusals
    ]
    lines += render_left_out(status.left_out)
    return "\n".join(lines)


def render_regional(view: RegionalView) -> str:
    lines = [f"{view.jurisdiction} regional: {len(view.silos)} silos registered ({', '.join(view.silos)})"]
    lines.append(render_rounds(view.rounds))
    lines += render_left_out(view.left_out)
    return "\n".join(lines)


def render_plan(plan: PlanProgress) -> str:
    ended = f" ({plan.reason})" if plan.reason else ""
    return f"plan {plan.name}: rounds {plan.first_round}-{plan.last_round}, {plan.status}{ended}"


def render_rounds(rounds: tuple[RoundSummary, ...]) -> str:
    if not rounds:
        return "  no round has closed yet"
    return "\n".join(render_round_line(summary) for summary in rounds)


def render_round_line(summary: RoundSummary) -> str:
    refused = f", {len(summary.rejections)} refused" if summary.rejections else ""
    model = f", model {summary.model_sha256[:12]}" if summary.model_sha256 else ""
    return (
        f"  round {summary.round}: {summary.outcome}; {', '.join(summary.participants) or 'nobody'} "
        f"({summary.example_total} examples, {summary.bytes_received} bytes in, "
        f"{summary.wall_time_s:.1f} s{refused}{model})"
    )


def render_left_out(entries: Iterable[LeftOutEntry]) -> list[str]:
    """Per round, the count by reason code, then who and why."""
    by_round: dict[int, list[LeftOutEntry]] = {}
    for entry in entries:
        by_round.setdefault(entry.round, []).append(entry)
    lines = []
    for number, left in sorted(by_round.items()):
        counts = Counter(entry.code for entry in left)
        lines.append(
            f"  round {number} left out: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
        )
        for entry in left:
            kind = "dropped out" if entry.dropout else "excluded"
            lines.append(f"    {entry.participant} {kind} ({entry.code}): {entry.detail}")
    return lines


def render_open_round(status: FederationStatus, opened_at: float | None) -> str:
    """One `watch` line for the open round: who has sent what, who is awaited, time elapsed."""
    number = status.current_round
    arrived = [c for c in status.contributions if c.round == number]
    sent = {c.jurisdiction for c in arrived}
    parts = [f"{c.jurisdiction} ({c.cohort_size} silos, {c.bytes_received} bytes)" for c in arrived]
    awaited = [j for j in status.jurisdictions if j not in sent]
    declined = {r.jurisdiction for r in status.refusals if r.round == number}
    elapsed = f" {time.time() - opened_at:.0f} s" if opened_at is not None else ""
    line = f"  round {number} open{elapsed}: aggregates from {', '.join(parts) or 'none yet'}"
    waiting = [j for j in awaited if j not in declined]
    if waiting:
        line += f"; waiting for {', '.join(waiting)}"
    if declined:
        line += f"; declined: {', '.join(sorted(declined))}"
    return line


def render_history(history: RoundHistory) -> str:
    lines = []
    if history.head_version is not None:
        lines.append(f"head: checkpoint {history.head_version} (model {history.head_sha256})")
    lines += [render_plan(plan) for plan in history.plans]
    for entry in history.rounds:
        lines += _round(entry, _plan_of(entry.round, history.plans))
    for rollback in history.rollbacks:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rollback.rolled_back_at))
        source = "none" if rollback.from_version is None else str(rollback.from_version)
        lines.append(f"rollback {when} UTC: checkpoint {source} -> {rollback.to_version} ({rollback.reason})")
    return "\n".join(lines) if lines else "no round yet"


def _round(entry: RoundEntry, plan: str) -> list[str]:
    took = f", {entry.closed_at - entry.opened_at:.1f} s" if entry.closed_at is not None else ""
    lines = [
        f"round {entry.round} [{outcome(entry)}] plan {plan}{took}",
        f"  contract {entry.contract_sha256[:16]}, base {entry.base_sha256[:16]}, model {entry.model_sha256}",
    ]
    if entry.participants:
        lines.append(
            "  participants: "
            + ", ".join(
                f"{p.participant} {p.example_count} examples ({p.cohort_size} silos)"
                for p in entry.participants
            )
        )
    gates = [c for c in entry.checks if c.is_gate]
    metrics = [c for c in entry.checks if not c.is_gate]
    if gates:
        lines.append("  gates: " + "; ".join(_gate(c) for c in gates))
    if metrics:
        lines.append("  metrics: " + ", ".join(f"{c.name} {_number(c.value)}" for c in metrics))
    if entry.left_out:
        counts = Counter(e.code for e in entry.left_out)
        lines.append("  left out: " + ", ".join(f"{code} {n}" for code, n in sorted(counts.items())))
        lines += [
            f"    {e.participant} {'dropped out' if e.dropout else 'excluded'} ({e.code}): {e.detail}"
            for e in entry.left_out
        ]
    if entry.refusals:
        lines.append("  refused: " + "; ".join(f"{r.sender} {r.code}: {r.reason}" for r in entry.refusals))
    return lines


def _gate(check: CheckResult) -> str:
    verdict = "pass" if check.passed else "FAIL"
    return f"{check.name} {verdict} ({_number(check.value)}, limit {_number(check.threshold)})"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _plan_of(number: int, plans: tuple[PlanProgress, ...]) -> str:
    for plan in plans:
        if plan.first_round <= number <= plan.last_round:
            return plan.name
    return "-"
