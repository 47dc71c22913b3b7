"""The evidence bundle as a self-contained HTML page a non-engineer can read (no scripts, no links out).

Everything shown comes from a `BundleReport`, i.e. from records whose inclusion in the signed
log was just checked; the page says so at the top, in words, and says how to check it again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from html import escape

from jurisfed.audit.events import Decision, Detail, EventKind
from jurisfed.audit.export import BundleEntry, BundleReport, SealedIdentity
from jurisfed.audit.keys import fingerprint
from jurisfed.audit.wording import describe, fact, name, role, when

_STYLE = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;
background:#f4f6f9;margin:0}
main{max-width:1040px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:1.7em;margin:.2em 0}
h2{font-size:1.25em;margin:1.8em 0 .5em;border-bottom:2px solid #d9dee7;padding-bottom:4px}
.sub{color:#566076;margin:0}.verdict{border-radius:10px;padding:16px 20px;margin:20px 0;border:2px solid}
.ok{background:#e9f7ef;border-color:#2e8b57}.bad{background:#fdecec;border-color:#c0392b}
.verdict strong{font-size:1.15em}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card{background:#fff;border:1px solid #d9dee7;border-radius:10px;padding:12px 14px}
.card b{display:block;font-size:1.5em}.card span{color:#566076;font-size:.9em}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d9dee7;font-size:.93em}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid #e6e9ef;vertical-align:top}
th{background:#eef1f6}tr:nth-child(even) td{background:#fafbfd}
.pill{display:inline-block;border-radius:99px;padding:0 9px;font-size:.85em;font-weight:600}
.allow,.pass{background:#dff3e6;color:#1e6b40}.deny,.fail{background:#fbe0de;color:#962d22}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em;word-break:break-all}
.muted{color:#566076}.note{background:#fff;border-left:4px solid #7a8aa8;padding:8px 14px;margin:10px 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:12px 16px;
border:1px solid #d9dee7;border-radius:10px}dt{color:#566076}dd{margin:0}
@media print{body{background:#fff}.card,table,dl{break-inside:avoid}}
"""


def render_html(report: BundleReport) -> str:
    entries = report.entries
    origin = report.origin
    title = f"Audit evidence: {report.selection}"
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">From the audit log of the {escape(role(origin.tier.value))} '
        f"<b>{escape(origin.node)}</b> ({escape(origin.jurisdiction)}) &middot; prepared for readers in "
        f"{escape(report.audience)} on {escape(when(report.created))}</p>",
        _verdict(report),
        _glance(entries),
        _residency(entries),
        _participants(entries, report.audience),
        _versions(entries),
        _decisions(entries),
        _gates(entries),
        _privacy(entries),
        _aggregates(entries),
        _timeline(entries),
        _how_to_check(report),
        _technical(report),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


def _verdict(report: BundleReport) -> str:
    cp = report.checkpoint
    count = len(report.entries)
    span = (
        f"records {report.entries[0].sequence}&ndash;{report.entries[-1].sequence}" if count else "no records"
    )
    key = f"<span class='mono'>{escape(fingerprint(cp.key_id))}</span>"
    if report.ok:
        pinned = (
            "The key was checked against the one you supplied."
            if report.key_pinned
            else "Compare this fingerprint with the one the operator published: it was checked against the "
            "key enclosed in the bundle."
        )
        return (
            '<div class="verdict ok"><strong>&#10004; Verified.</strong> '
            f"The {count} events below ({span}) are exactly as recorded in the audit log, with none "
            f"left out in between. That log held {cp.size} events when its owner signed it on "
            f"{escape(when(cp.time))} with the key whose fingerprint is {key}. {pinned}</div>"
        )
    items = "".join(f"<li>{escape(problem)}</li>" for problem in report.problems)
    return (
        '<div class="verdict bad"><strong>&#10008; NOT verified.</strong> This bundle does not match the '
        f"signed audit log; do not rely on it.<ul>{items}</ul></div>"
    )


def _glance(entries: Sequence[BundleEntry]) -> str:
    silos = {name(e.subject) for e in entries if _is_silo(e.subject)}
    decisions = Counter(e.decision for e in entries if e.kind == EventKind.POLICY_DECISION)
    gates = Counter(e.decision for e in entries if e.kind == EventKind.GATE)
    epsilon = sum(
        _number(e.details.get(Detail.DP_EPSILON)) for e in entries if e.kind == EventKind.AGGREGATE_SENT
    )
    outcome = "&mdash;"
    if any(e.kind == EventKind.ROLLBACK for e in entries):
        outcome = "rolled back"
    elif any(e.kind == EventKind.COMMIT for e in entries):
        outcome = "committed"
    cards = [
        (str(len(silos)), "silos named in these events"),
        (str(len({e.jurisdiction for e in entries})), "jurisdictions concerned"),
        (f"{decisions[Decision.ALLOW]} / {decisions[Decision.DENY]}", "policy decisions allowed / refused"),
        (f"{gates[Decision.PASS]} / {gates[Decision.FAIL]}", "acceptance gates passed / failed"),
        (f"&epsilon; {epsilon:g}" if epsilon else "none recorded", "privacy budget spent on data sent"),
        (outcome, "round outcome"),
    ]
    inner = "".join(f'<div class="card"><b>{value}</b><span>{label}</span></div>' for value, label in cards)
    return f'<h2>At a glance</h2><div class="cards">{inner}</div>'


def _residency(entries: Sequence[BundleEntry]) -> str:
    updates = [e for e in entries if e.kind == EventKind.UPDATE_RECEIVED and e.subject is not None]
    crossed = [e for e in updates if e.subject is not None and e.subject.jurisdiction != e.actor.jurisdiction]
    sent = [e for e in entries if e.kind == EventKind.AGGREGATE_SENT]
    if not updates and not sent:
        return ""
    if crossed:
        verdict = (
            f"<b>{len(crossed)} of {len(updates)} individual updates were received outside their own "
            f"jurisdiction</b> (records {', '.join(str(e.sequence) for e in crossed)})."
        )
    else:
        verdict = (
            f"All {len(updates)} individual model updates recorded here were received by an aggregator "
            "in the silo&rsquo;s own jurisdiction."
        )
    plural = "s" if len(sent) != 1 else ""
    onward = (
        f" What was sent onward was {len(sent)} combined update{plural}, never an individual one."
        if sent
        else ""
    )
    return (
        f'<h2>Where data went</h2><p class="note">{verdict}{onward} Raw training data never appears in this '
        "log: only fingerprints (digests) of what was exchanged.</p>"
    )


def _participants(entries: Sequence[BundleEntry], audience: str) -> str:
    seen: dict[str, tuple[SealedIdentity, list[str]]] = {}
    for entry in entries:
        subject = entry.subject
        if subject is None or subject.tier in ("global",):
            continue
        _, facts = seen.setdefault(name(subject), (subject, []))
        facts.append(fact(entry))
    if not seen:
        return ""
    rows = [
        [
            escape(name(identity)),
            escape(identity.jurisdiction),
            escape(role(identity.tier)),
            "<br>".join(dict.fromkeys(facts)),
        ]
        for identity, facts in seen.values()
    ]
    hidden = [identity.label for identity, _ in seen.values() if identity.node is None and identity.pseudonym]
    note = ""
    if hidden:
        note = (
            f'<p class="muted">Silos outside {escape(audience)} are shown by a pseudonym such as '
            f"&ldquo;{escape(hidden[0])}&rdquo;: the same pseudonym always means the same silo within this "
            "report, but the name itself is withheld. Their jurisdiction is shown and is covered by the "
            "proof.</p>"
        )
    return (
        "<h2>Who was involved</h2>"
        + note
        + _table(["Participant", "Jurisdiction", "Role", "What the log records"], rows)
    )


def _versions(entries: Sequence[BundleEntry]) -> str:
    rows = []
    for label, values in (
        ("Residency policy version (fingerprint)", [e.policy_hash for e in entries]),
        ("Code version", [_text(e.details.get(Detail.CODE_VERSION)) for e in entries]),
        ("Model signature", [_text(e.details.get(Detail.MODEL_SIGNATURE)) for e in entries]),
    ):
        counted = Counter(v for v in values if v)
        for value, times in counted.items():
            rows.append([label, f"<span class='mono'>{escape(value)}</span>", str(times)])
    if not rows:
        return ""
    return "<h2>Code and policy versions</h2>" + _table(["What", "Version", "Events"], rows)


def _decisions(entries: Sequence[BundleEntry]) -> str:
    chosen = [
        e
        for e in entries
        if e.kind
        in (
            EventKind.POLICY_DECISION,
            EventKind.CONTRACT_DECISION,
            EventKind.ELIGIBILITY_EXCLUSION,
            EventKind.QUARANTINE,
            EventKind.DROPOUT,
        )
    ]
    if not chosen:
        return ""
    rows = [[when(e.time), _pill(e.decision), describe(e), escape(e.rule or "")] for e in chosen]
    return "<h2>Decisions</h2>" + _table(["When", "Decision", "What happened", "Rule"], rows)


def _gates(entries: Sequence[BundleEntry]) -> str:
    chosen = [e for e in entries if e.kind == EventKind.GATE]
    if not chosen:
        return ""
    rows = [
        [
            escape(_text(e.details.get(Detail.METRIC)) or "quality"),
            escape(_text(e.details.get(Detail.VALUE))),
            escape(_text(e.details.get(Detail.THRESHOLD))),
            _pill(e.decision),
        ]
        for e in chosen
    ]
    return "<h2>Thresholds and acceptance gates</h2>" + _table(
        ["Measure", "Measured", "Threshold", "Result"], rows
    )


def _privacy(entries: Sequence[BundleEntry]) -> str:
    spent: dict[str, list[float]] = defaultdict(list)
    delta: dict[str, float] = {}
    for e in entries:
        if (
            e.kind in (EventKind.AGGREGATE_SENT, EventKind.AGGREGATE_RECEIVED)
            and Detail.DP_EPSILON in e.details
        ):
            source = e.jurisdiction
            spent[source].append(_number(e.details[Detail.DP_EPSILON]))
            if Detail.DP_DELTA in e.details:
                delta[source] = _number(e.details[Detail.DP_DELTA])
    if not spent:
        return ""
    rows = [
        [escape(j), f"{max(v):g}", f"{delta[j]:g}" if j in delta else "&mdash;"]
        for j, v in sorted(spent.items())
    ]
    note = (
        '<p class="muted">Differential privacy: &epsilon; (epsilon) bounds how much any single record can '
        "change what is shared; smaller is more private. &delta; is the small probability that the bound "
        "does not hold.</p>"
    )
    return (
        "<h2>Privacy spent</h2>"
        + note
        + _table(["Jurisdiction", "&epsilon; for this round", "&delta;"], rows)
    )


def _aggregates(entries: Sequence[BundleEntry]) -> str:
    chosen = [e for e in entries if e.kind in (EventKind.AGGREGATE_SENT, EventKind.AGGREGATE_RECEIVED)]
    if not chosen:
        return ""
    rows = [
        [
            describe(e),
            escape(_text(e.details.get(Detail.COMPRESSION)) or "none"),
            "<br>".join(
                f"{escape(k)}: <span class='mono'>{escape(v[:16])}&hellip;</span>"
                for k, v in e.digests.items()
            ),
        ]
        for e in chosen
    ]
    return "<h2>Combined updates exchanged</h2>" + _table(["What", "Compression", "Fingerprints"], rows)


def _timeline(entries: Sequence[BundleEntry]) -> str:
    rows = [
        [str(e.sequence), when(e.time), describe(e), "" if e.round_number is None else str(e.round_number)]
        for e in entries
    ]
    return "<h2>Everything that was recorded, in order</h2>" + _table(
        ["#", "When (UTC)", "What happened", "Round"], rows
    )


def _how_to_check(report: BundleReport) -> str:
    return (
        "<h2>How to check this yourself</h2><ol>"
        "<li>Get the audit log&rsquo;s public key from its operator, and check that its fingerprint is "
        f"<span class='mono'>{escape(fingerprint(report.checkpoint.key_id))}</span>.</li>"
        "<li>Run <code>jurisfed audit verify-bundle evidence.json --key PUBLIC-KEY-FILE</code>. It "
        "recomputes every event&rsquo;s fingerprint and checks its receipt (an inclusion proof) against the "
        "signed summary of the log (a checkpoint). Changing, removing or reordering any event makes the "
        "check fail.</li><li>The operator can also run <code>jurisfed audit verify LOG</code> on the full "
        "log, and compare it with the copies of its checkpoints that other aggregators keep (witnesses).</li>"
        "</ol>"
    )


def _technical(report: BundleReport) -> str:
    cp = report.checkpoint
    items = [
        ("Log owner", f"<span class='mono'>{escape(report.origin.uri)}</span>"),
        ("Selection", escape(report.selection)),
        ("Signed checkpoint", f"{cp.size} events, signed {escape(when(cp.time))}"),
        ("Tree head (root hash)", f"<span class='mono'>{cp.root.hex()}</span>"),
        ("Signing key id", f"<span class='mono'>{escape(cp.key_id)}</span>"),
        ("Prepared for", escape(report.audience)),
    ]
    inner = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f"<h2>Technical details</h2><dl>{inner}</dl>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_silo(identity: SealedIdentity | None) -> bool:
    return identity is not None and identity.tier == "silo"


def _pill(decision: str | None) -> str:
    if decision is None:
        return ""
    words = {"allow": "allowed", "deny": "refused", "pass": "passed", "fail": "failed"}
    return f'<span class="pill {escape(decision)}">{escape(words.get(decision, decision))}</span>'


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _text(value: object) -> str:
    return "" if value is None else str(value)
