"""A policy in plain language: Markdown, and a self-contained HTML page for reviewers.

Both renderings say the same things in the same order: who owns the policy and when it
applies; the default (nothing moves unless a rule allows it); each rule as a sentence with
its legal basis and conditions; the data that never leaves; retention; the names used; the
approvals. The HTML page has no scripts and loads nothing: it can be mailed, archived or
printed as it is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from jurisfed.policy import wording
from jurisfed.policy.model import Artifact, Policy, Rule, Tier
from jurisfed.policy.signing import ApprovalCheck, ApprovalStatus

__all__ = ["explain_html", "explain_markdown"]

DEFAULT_SENTENCE = (
    "Nothing moves unless a rule below allows it. Any flow of model information that no rule "
    "allows is refused, and raw data never leaves the silo that holds it."
)
_STATUS_WORDS = {
    ApprovalStatus.VALID: "signature verified against a trusted key",
    ApprovalStatus.UNTRUSTED: "signature sound, but the key is not among the trusted keys",
    ApprovalStatus.INVALID: "signature does NOT match this text: changed after approval",
}


def _headline(policy: Policy) -> str:
    return (
        f"Policy {policy.id}, version {policy.version}, for jurisdiction {policy.jurisdiction}, "
        f"in force from {policy.effective_from}."
    )


def _owners(policy: Policy) -> str:
    parts = []
    for owner in policy.owners:
        extra = ", ".join(x for x in (owner.role, owner.contact) if x)
        parts.append(f"{owner.name} ({extra})" if extra else owner.name)
    return "; ".join(parts)


def _hosting(policy: Policy) -> str | None:
    if policy.hosting_location is None:
        return None
    return f"The nodes this policy governs run in {wording.location(policy, policy.hosting_location)}."


def _restriction_sentence(policy: Policy, data_class: str) -> str:
    return (
        f"Nothing derived from {data_class} data leaves {policy.jurisdiction}, in any form: "
        "not as updates, aggregates, models, telemetry or evidence."
    )


def _approval_line(check: ApprovalCheck | None, approver: str, approved_at: str, key: str) -> str:
    when = approved_at.replace("T", " at ").replace("Z", " UTC")
    status = f" — {_STATUS_WORDS[check.status]}" if check else ""
    return f"Approved by {approver} on {when} (key {key}){status}."


def _approval_lines(policy: Policy, checks: Sequence[ApprovalCheck] | None) -> list[str]:
    by_key = {c.approval.key_id: c for c in checks or ()}
    return [
        _approval_line(
            by_key.get(a.key_id) if checks is not None else None, a.approver, a.approved_at, a.key_id
        )
        for a in policy.approvals
    ]


_UNSIGNED = "This version has not been approved: it carries no signature, and no tier will run under it."
_NO_RULES = "No rule: nothing may move under this policy."
_UNCHECKED = "Signatures were not checked for this rendering; the command jurisfed policy verify checks them."


# --- Markdown ---------------------------------------------------------------------------------


def _md(text: str) -> str:
    """Plain text made safe for Markdown: characters that would format or break a table."""
    for char in "\\`*_|<>[]":
        text = text.replace(char, "\\" + char)
    return text


def explain_markdown(policy: Policy, checks: Sequence[ApprovalCheck] | None = None) -> str:
    """The policy as Markdown; `checks` (from `check_approvals`) adds each signature's status."""
    out: list[str] = [f"# {_md(policy.title)}", "", f"*{_md(_headline(policy))}*", ""]
    if policy.description:
        out += [_md(policy.description), ""]
    out += [f"**Owners:** {_md(_owners(policy))}", ""]
    hosting = _hosting(policy)
    if hosting:
        out += [_md(hosting), ""]
    out += ["## The default", "", _md(DEFAULT_SENTENCE), ""]
    out += _md_rules(policy)
    out += _md_restricted(policy)
    out += _md_retention(policy)
    out += _md_names(policy)
    out += ["## Approvals", ""]
    lines = _approval_lines(policy, checks)
    out += [f"- {_md(line)}" for line in lines] if lines else [_md(_UNSIGNED)]
    if lines and checks is None:
        out += ["", _md(_UNCHECKED)]
    out += ["", f"Fingerprint of this version: `{policy.sha256}`", ""]
    return "\n".join(out)


def _rules_heading(policy: Policy) -> str:
    return f"What may move ({len(policy.rules)} rule{'s' if len(policy.rules) != 1 else ''})"


def _md_rules(policy: Policy) -> list[str]:
    out = [f"## {_rules_heading(policy)}", ""]
    if not policy.rules:
        out += [_NO_RULES, ""]
    for number, rule in enumerate(policy.rules, 1):
        clauses = wording.conditions(policy, rule)
        out += [f"### {number}. {_md(rule.description)}", "", _md(_lead_sentence(policy, rule, clauses)), ""]
        out += [f"- {_md(wording.capitalised(clause))}." for clause in clauses]
        out += ["", f"Legal basis: {_md(rule.legal_basis)}. Rule id: `{rule.id}`.", ""]
    return out


def _lead_sentence(policy: Policy, rule: Rule, clauses: list[str]) -> str:
    """The permission, ending by pointing at its conditions (listed next) or saying there are none."""
    permission = wording.capitalised(wording.permission(policy, rule))
    return f"{permission}, only if all of these hold:" if clauses else f"{permission}, with no conditions."


def _md_restricted(policy: Policy) -> list[str]:
    if not policy.restricted_data:
        return []
    out = [f"## What never leaves {policy.jurisdiction}", ""]
    for restriction in policy.restricted_data:
        sentence = _restriction_sentence(policy, restriction.data_class)
        out.append(
            f"- **{_md(sentence)}** {_md(restriction.description)} "
            f"Legal basis: {_md(restriction.legal_basis)}. (Rule id `{restriction.id}`.)"
        )
    return [*out, ""]


def _md_retention(policy: Policy) -> list[str]:
    if not policy.retention:
        return []
    out = ["## How long things are kept", "", "| Kept by | What | For at most |", "| --- | --- | --- |"]
    for retention in policy.retention:
        note = f" — {retention.description}" if retention.description else ""
        out.append(
            f"| {_md(_keeper(retention.tier))} | {_md(wording.ARTIFACT_NOUNS[retention.artifact])} | "
            f"{_days(retention.days)}{_md(note)} |"
        )
    return [*out, ""]


def _md_names(policy: Policy) -> list[str]:
    out = ["## Names used in this policy", ""]
    for group in policy.groups:
        out.append(
            f"- **{group.name}** (group of jurisdictions): {_md(wording.join(list(group.jurisdictions)))}. "
            f"{_md(group.description)}"
        )
    for loc in policy.locations:
        extra = f" {_md(loc.description)}" if loc.description else ""
        out.append(f"- **{loc.name}** (hosting location): {_md(loc.place)}, in {loc.jurisdiction}.{extra}")
    for artifact in _artifacts_named(policy):
        out.append(
            f"- **{_md(wording.ARTIFACT_NOUNS[artifact])}**: {_md(wording.ARTIFACT_MEANINGS[artifact])}."
        )
    out += [f"- **{_md(_keeper(tier))}**: {_md(wording.TIER_MEANINGS[tier])}." for tier in Tier]
    return [*out, ""]


def _keeper(tier: Tier) -> str:
    return {
        Tier.SILO: "silos",
        Tier.REGIONAL: "regional aggregator",
        Tier.GLOBAL: "global aggregator",
        Tier.OPERATOR: "operator tools",
    }[tier]


def _days(days: int) -> str:
    if days == 0:
        return "not kept"
    years = f" (about {round(days / 365)} year{'s' if round(days / 365) != 1 else ''})" if days >= 365 else ""
    return f"{days} day{'s' if days != 1 else ''}{years}"


def _artifacts_named(policy: Policy) -> list[Artifact]:
    named = {a for rule in policy.rules for a in rule.artifacts} | {r.artifact for r in policy.retention}
    return [a for a in Artifact if a in named or a is Artifact.RAW_DATA]


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1d2430; background: #f4f6f9; margin: 0; }
main { max-width: 52rem; margin: 0 auto; padding: 2rem 1.5rem 4rem; }
header { background: #fff; border: 1px solid #d9dee6; border-radius: 10px; padding: 1.5rem; }
h1 { font-size: 1.7rem; margin: 0 0 .4rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .8rem; border-bottom: 2px solid #d9dee6; padding-bottom: .3rem; }
h3 { font-size: 1.05rem; margin: 0 0 .5rem; }
.meta { color: #4b5565; margin: .2rem 0; }
.default { background: #fff4e5; border-left: 5px solid #d9822b; padding: .9rem 1.1rem; border-radius: 6px; }
.rule { background: #fff; border: 1px solid #d9dee6; border-left: 5px solid #2f855a; border-radius: 8px;
  padding: 1rem 1.2rem; margin: 0 0 1rem; }
.never { border-left-color: #c53030; }
.sentence { font-size: 1.05rem; margin: .2rem 0 .7rem; }
.label { display: inline-block; min-width: 7.5rem; color: #4b5565; font-weight: 600; }
.conditions { margin: .4rem 0 0; padding-left: 1.3rem; }
.conditions li::marker { content: "✓  "; color: #2f855a; }
code { font: .9em ui-monospace, "SF Mono", Menlo, Consolas, monospace; background: #eef1f5;
  padding: .05rem .3rem; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: 0 0 1.5rem; }
th, td { border: 1px solid #d9dee6; padding: .45rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
.badge { display: inline-block; padding: .15rem .6rem; border-radius: 999px; font-size: .85rem;
  font-weight: 600; }
.ok { background: #e3f4ea; color: #1f6b43; }
.bad { background: #fde8e8; color: #9b2c2c; }
.unknown { background: #eef1f5; color: #4b5565; }
dl { margin: 0; } dt { font-weight: 600; margin-top: .6rem; } dd { margin: 0 0 0 1rem; }
footer { color: #4b5565; font-size: .85rem; margin-top: 2.5rem; word-break: break-all; }
@media print { body { background: #fff; } .rule, header { break-inside: avoid; } }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def explain_html(policy: Policy, checks: Sequence[ApprovalCheck] | None = None) -> str:
    """The policy as one self-contained HTML page (inline style, no scripts, nothing loaded)."""
    body: list[str] = [
        "<header>",
        f"<h1>{_e(policy.title)}</h1>",
        f'<p class="meta">{_e(_headline(policy))}</p>',
        f'<p class="meta"><strong>Owners:</strong> {_e(_owners(policy))}</p>',
    ]
    hosting = _hosting(policy)
    if hosting:
        body.append(f'<p class="meta">{_e(hosting)}</p>')
    body.append(f"<p>{_approval_badge(policy, checks)}</p>")
    if policy.description:
        body.append(f"<p>{_e(policy.description)}</p>")
    body += ["</header>", "<h2>The default</h2>", f'<p class="default">{_e(DEFAULT_SENTENCE)}</p>']
    body.append(f"<h2>{_e(_rules_heading(policy))}</h2>")
    body.append(_overview_table(policy) if policy.rules else f"<p>{_e(_NO_RULES)}</p>")
    body += [_rule_card(policy, number, rule) for number, rule in enumerate(policy.rules, 1)]
    body += _html_restricted(policy)
    body += _html_retention(policy)
    body += _html_names(policy)
    body.append("<h2>Approvals</h2>")
    lines = _approval_lines(policy, checks)
    if lines:
        body += ["<ul>", *[f"<li>{_e(line)}</li>" for line in lines], "</ul>"]
        if checks is None:
            body.append(f"<p>{_e(_UNCHECKED)}</p>")
    else:
        body.append(f'<p><span class="badge bad">{_e(_UNSIGNED)}</span></p>')
    body.append(f"<footer>Fingerprint of this version: <code>{_e(policy.sha256)}</code></footer>")
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(policy.title)} — version {policy.version}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
    ]
    return "\n".join([*head, "<body>", "<main>", *body, "</main>", "</body>", "</html>", ""])


def _html_restricted(policy: Policy) -> list[str]:
    if not policy.restricted_data:
        return []
    out = [f"<h2>What never leaves {_e(policy.jurisdiction)}</h2>"]
    for restriction in policy.restricted_data:
        sentence = _restriction_sentence(policy, restriction.data_class)
        out += [
            '<section class="rule never">',
            f'<p class="sentence"><strong>{_e(sentence)}</strong></p>',
            f"<p>{_e(restriction.description)}</p>",
            f'<p><span class="label">Legal basis</span> {_e(restriction.legal_basis)}</p>',
            f'<p><span class="label">Rule id</span> <code>{_e(restriction.id)}</code></p>',
            "</section>",
        ]
    return out


def _html_retention(policy: Policy) -> list[str]:
    if not policy.retention:
        return []
    out = [
        "<h2>How long things are kept</h2>",
        "<table>",
        "<tr><th>Kept by</th><th>What</th><th>For at most</th><th>Note</th></tr>",
    ]
    for retention in policy.retention:
        out.append(
            f"<tr><td>{_e(_keeper(retention.tier))}</td><td>{_e(wording.ARTIFACT_NOUNS[retention.artifact])}</td>"
            f"<td>{_e(_days(retention.days))}</td><td>{_e(retention.description)}</td></tr>"
        )
    return [*out, "</table>"]


def _html_names(policy: Policy) -> list[str]:
    out = ["<h2>Names used in this policy</h2>", "<dl>"]
    for group in policy.groups:
        out.append(
            f"<dt>{_e(group.name)} <small>(group of jurisdictions)</small></dt>"
            f"<dd>{_e(wording.join(list(group.jurisdictions)))}. {_e(group.description)}</dd>"
        )
    for loc in policy.locations:
        extra = f" {_e(loc.description)}" if loc.description else ""
        out.append(
            f"<dt>{_e(loc.name)} <small>(hosting location)</small></dt>"
            f"<dd>{_e(loc.place)}, in {_e(loc.jurisdiction)}.{extra}</dd>"
        )
    for artifact in _artifacts_named(policy):
        out.append(
            f"<dt>{_e(wording.ARTIFACT_NOUNS[artifact])}</dt><dd>{_e(wording.ARTIFACT_MEANINGS[artifact])}.</dd>"
        )
    out += [f"<dt>{_e(_keeper(tier))}</dt><dd>{_e(wording.TIER_MEANINGS[tier])}.</dd>" for tier in Tier]
    return [*out, "</dl>"]


def _approval_badge(policy: Policy, checks: Sequence[ApprovalCheck] | None) -> str:
    if not policy.approvals:
        return '<span class="badge bad">Not approved: unsigned</span>'
    names = wording.join([a.approver for a in policy.approvals])
    if checks is None:
        return f'<span class="badge unknown">Approved by {_e(names)} (signatures not checked here)</span>'
    if any(c.status is ApprovalStatus.INVALID for c in checks):
        return '<span class="badge bad">Changed after approval: signatures do not match</span>'
    if any(c.status is ApprovalStatus.VALID for c in checks):
        return f'<span class="badge ok">Approved by {_e(names)}; signatures verified</span>'
    return f'<span class="badge unknown">Approved by {_e(names)}, with keys not trusted here</span>'


def _overview_table(policy: Policy) -> str:
    rows = [
        "<table>",
        "<caption hidden>Every flow this policy allows</caption>",
        "<tr><th>From</th><th>To</th><th>What</th><th>Conditions</th></tr>",
    ]
    for rule in policy.rules:
        count = len(wording.conditions(policy, rule))
        rows.append(
            f"<tr><td>{_e(wording.capitalised(wording.party(policy, rule.source)))}</td>"
            f"<td>{_e(wording.capitalised(wording.party(policy, rule.destination)))}</td>"
            f"<td>{_e(wording.capitalised(wording.artifacts(rule.artifacts)))}</td>"
            f"<td>{count if count else 'none'}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _rule_card(policy: Policy, number: int, rule: Rule) -> str:
    clauses = wording.conditions(policy, rule)
    parts = [
        f'<section class="rule" id="{_e(rule.id)}">',
        f"<h3>{number}. {_e(rule.description)}</h3>",
        f'<p class="sentence">{_e(_lead_sentence(policy, rule, clauses))}</p>',
    ]
    if clauses:
        parts += [
            '<ul class="conditions">',
            *[f"<li>{_e(wording.capitalised(c))}.</li>" for c in clauses],
            "</ul>",
        ]
    parts += [
        f'<p><span class="label">Legal basis</span> {_e(rule.legal_basis)}</p>',
        f'<p><span class="label">Rule id</span> <code>{_e(rule.id)}</code></p>',
        "</section>",
    ]
    return "\n".join(parts)
