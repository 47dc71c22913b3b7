"""`jurisfed privacy report`: spent and remaining budget per jurisdiction, and how it got there.

Plain text for operators and auditors. Per jurisdiction: its cap (epsilon at delta over a
rolling period), what the releases inside the period have spent and what remains, lifetime
epsilon, and the latest releases with epsilon after each (over the period as it stood then,
and over all time). A jurisdiction with releases but no budget is shown as having none:
a regional with no cap configured refuses DP rounds rather than spending without limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from jurisfed.privacy.accounting import (
    DEFAULT_DELTA,
    describe,
    epsilons_over_time,
    event_to_json,
    stored_epsilon,
)
from jurisfed.privacy.ledger import SECONDS_PER_DAY, Budget, PrivacyLedger, Release


def render_report(
    ledger: PrivacyLedger,
    budgets: Mapping[str, Budget],
    *,
    jurisdictions: Sequence[str] | None = None,
    latest: int = 10,
) -> str:
    """The report for `jurisdictions` (default: every one with a budget or a release)."""
    now = ledger.now()
    names = jurisdictions if jurisdictions is not None else sorted({*budgets, *ledger.jurisdictions()})
    lines = [f"Privacy budget per jurisdiction at {now:%Y-%m-%d %H:%M} UTC", ""]
    if not names:
        lines.append("No jurisdiction has a budget or a release.")
    for name in names:
        lines += _jurisdiction(name, ledger.releases(name), budgets.get(name), now, latest)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _jurisdiction(
    name: str, releases: list[Release], budget: Budget | None, now: datetime, latest: int
) -> list[str]:
    delta = budget.delta if budget is not None else DEFAULT_DELTA
    stored = [event_to_json(release.event) for release in releases]
    lifetime = epsilons_over_time(stored, delta)
    if budget is None:
        header = [f"{name}: no budget configured (DP rounds are refused)"]
        window = lifetime
    else:
        period = timedelta(seconds=budget.period_days * SECONDS_PER_DAY)
        window = [
            _spent_in(releases[: index + 1], stored, r.released_at - period, delta)
            for index, r in enumerate(releases)
        ]
        in_window = [r for r in releases if r.released_at > now - period]
        spent = _spent_in(releases, stored, now - period, delta)
        header = [
            f"{name}: cap epsilon {budget.cap_epsilon:g} per {budget.period_days:g} days at delta {delta:g}",
            f"  spent {spent:.4g} in the last {budget.period_days:g} days ({len(in_window)} releases), "
            f"remaining {max(0.0, budget.cap_epsilon - spent):.4g}"
            + ("  ** CAP REACHED **" if spent >= budget.cap_epsilon else ""),
        ]
    total = f"{lifetime[-1]:.4g}" if lifetime else "0"
    header.append(f"  lifetime epsilon {total} over {len(releases)} releases")
    if not releases:
        return header
    rows = [f"  {'released (UTC)':<17} {'release':<14} {'eps in period':>13} {'eps ever':>9}  mechanism"]
    for index in range(max(0, len(releases) - latest), len(releases)):
        release = releases[index]
        rows.append(
            f"  {release.released_at:%Y-%m-%d %H:%M} {release.release_id:<14.14} "
            f"{window[index]:>13.4g} {lifetime[index]:>9.4g}  {describe(release.event)}"
        )
    if len(releases) > latest:
        rows.insert(1, f"  ... {len(releases) - latest} earlier releases")
    return header + rows


def _spent_in(releases: list[Release], stored: list[str], after: datetime, delta: float) -> float:
    """Epsilon of those of `releases` made after `after` (`stored`: their events, same order)."""
    return stored_epsilon(
        (text for r, text in zip(releases, stored, strict=False) if r.released_at > after), delta
    )
