"""Plain-language wording of audit events, for readers who are not engineers.

Every function returns HTML-escaped text: names, rules and reasons come from the log.
"""

from __future__ import annotations

import datetime
from html import escape

from jurisfed.audit.events import Decision, Detail, EventKind
from jurisfed.audit.export import BundleEntry, SealedIdentity

_TIERS = {
    "silo": "silo",
    "regional": "regional aggregator",
    "global": "global aggregator",
    "operator": "operator",
}


def describe(entry: BundleEntry) -> str:
    """One plain-language sentence for an event (HTML-escaped)."""
    who = escape(name(entry.subject)) if entry.subject is not None else "the federation"
    d = entry.details
    rule = f" (rule &ldquo;{escape(entry.rule)}&rdquo;)" if entry.rule else ""
    reason = f": {escape(str(d[Detail.REASON]))}" if Detail.REASON in d else ""
    kind = entry.kind
    if kind == EventKind.POLICY_DECISION:
        verb = "allowed" if entry.decision == Decision.ALLOW else "refused"
        return f"Residency policy {verb} {who}{rule}"
    if kind == EventKind.CONTRACT_DECISION:
        verb = "accepted" if entry.decision == Decision.ALLOW else "refused"
        return f"Round contract from {who} {verb} under local policy{rule}"
    if kind == EventKind.GATE:
        verb = "passed" if entry.decision == Decision.PASS else "failed"
        metric = escape(str(d.get(Detail.METRIC, "quality")))
        measured = _measure(d)
        return f"Acceptance gate &ldquo;{metric}&rdquo; {verb}{measured}"
    if kind == EventKind.UPDATE_RECEIVED:
        examples = (
            f" ({_count(d[Detail.EXAMPLE_COUNT])} training examples)" if Detail.EXAMPLE_COUNT in d else ""
        )
        return f"Model update received from {who}{examples}"
    if kind == EventKind.AGGREGATE_SENT:
        return f"Combined update{_cohort(d)} sent to {who}"
    if kind == EventKind.AGGREGATE_RECEIVED:
        return f"Combined update{_cohort(d)} received from {who}"
    templates = {
        EventKind.SILO_REGISTERED: f"{who} registered to take part",
        EventKind.CONTRACT_ISSUED: f"Round contract issued to {who}",
        EventKind.ELIGIBILITY_EXCLUSION: f"{who} was not eligible for this round{reason}",
        EventKind.DROPOUT: f"{who} dropped out{reason}",
        EventKind.QUARANTINE: f"Set aside (quarantined) the update of {who}{reason}",
        EventKind.COMMIT: "New model version committed" + _version(d),
        EventKind.ROLLBACK: f"Round rolled back; the previous model stays in use{reason}",
        EventKind.KEY_CHANGE: f"A signing key was replaced{reason}",
        EventKind.CERTIFICATE_CHANGE: f"A certificate of {who} was replaced{reason}",
        EventKind.WITNESSED_CHECKPOINT: f"Kept a signed copy of the state of {who}&rsquo;s audit log",
        EventKind.WITNESS_CONFLICT: f"The audit log of {who} contradicted what was seen of it before{reason}",
        EventKind.LOG_OPENED: "Audit log opened (the aggregator started)",
        EventKind.LOG_RECOVERED: "Audit log reopened after a crash; an unfinished entry was discarded",
        EventKind.HEALTH_CHANGE: f"Readiness changed{reason}",
    }
    known = kind_of(entry)
    return templates.get(known, escape(kind)) if known is not None else escape(kind)


def fact(entry: BundleEntry) -> str:
    """What an event says about its subject, in a few words (HTML-escaped)."""
    d = entry.details
    rule = f" (rule &ldquo;{escape(entry.rule)}&rdquo;)" if entry.rule else ""
    reason = f": {escape(str(d[Detail.REASON]))}" if Detail.REASON in d else ""
    round_note = f" in round {entry.round_number}" if entry.round_number is not None else ""
    facts = {
        EventKind.SILO_REGISTERED: "registered",
        EventKind.POLICY_DECISION: ("allowed" if entry.decision == Decision.ALLOW else "refused")
        + " by policy"
        + rule,
        EventKind.ELIGIBILITY_EXCLUSION: "not eligible" + reason,
        EventKind.UPDATE_RECEIVED: "sent a model update"
        + (f" ({_count(d[Detail.EXAMPLE_COUNT])} examples)" if Detail.EXAMPLE_COUNT in d else ""),
        EventKind.DROPOUT: "dropped out" + reason,
        EventKind.QUARANTINE: "update quarantined" + reason,
        EventKind.AGGREGATE_SENT: "was sent a combined update",
        EventKind.AGGREGATE_RECEIVED: "sent a combined update",
        EventKind.CONTRACT_ISSUED: "was issued the round contract",
        EventKind.CONTRACT_DECISION: "issued a round contract that was "
        + ("accepted" if entry.decision == Decision.ALLOW else "refused"),
    }
    kind = kind_of(entry)
    return (facts.get(kind) if kind is not None else None) or describe(entry) + round_note


def name(identity: SealedIdentity | None) -> str:
    if identity is None:
        return ""
    if identity.node is not None:
        return f"{identity.node} ({identity.jurisdiction} {role(identity.tier)})"
    return identity.label


def kind_of(entry: BundleEntry) -> EventKind | None:
    try:
        return EventKind(entry.kind)
    except ValueError:
        return None


def role(tier: str) -> str:
    return _TIERS.get(tier, tier)


def _measure(details: dict[str, str | int | float | bool]) -> str:
    if Detail.VALUE not in details:
        return ""
    threshold = (
        f" against a threshold of {escape(str(details[Detail.THRESHOLD]))}"
        if Detail.THRESHOLD in details
        else ""
    )
    return f": measured {escape(str(details[Detail.VALUE]))}{threshold}"


def _cohort(details: dict[str, str | int | float | bool]) -> str:
    return f" of {_count(details[Detail.COHORT_SIZE])} participants" if Detail.COHORT_SIZE in details else ""


def _version(details: dict[str, str | int | float | bool]) -> str:
    return (
        f" (version {escape(str(details[Detail.CHECKPOINT_VERSION]))})"
        if Detail.CHECKPOINT_VERSION in details
        else ""
    )


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def when(time: datetime.datetime) -> str:
    return time.astimezone(datetime.UTC).strftime("%d %b %Y, %H:%M:%S UTC")
