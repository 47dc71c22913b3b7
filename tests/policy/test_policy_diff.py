"""`diff`: each change between two versions is one plain sentence, marked when it loosens or
tightens what may flow; layout and comments are no change."""

from __future__ import annotations

import pytest

from jurisfed.policy.diff import Change, Effect, diff_policies, render_changes
from jurisfed.policy.loader import parse_policy
from jurisfed.policy.model import Policy

L, T, N = Effect.LOOSENS, Effect.TIGHTENS, Effect.NEUTRAL

NEW_RULE = """\
  - id: telemetry-to-us
    description: Telemetry may go to the US regional.
    legal_basis: Law 11
    artifact: telemetry
    from: {tier: regional, jurisdiction: EU}
    to: {tier: regional, jurisdiction: US}
    conditions: {strip_metadata: [silo_ids], hosted_in: [us-east]}
"""


def changed(conditions_text: str, *edits: tuple[str, str]) -> list[Change]:
    text = conditions_text
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    text = text.replace("version: 1", "version: 2", 1)
    return diff_policies(parse_policy(conditions_text), parse_policy(text))


@pytest.mark.parametrize(
    ("edits", "sentence", "effect"),
    [
        (
            [("{min_cohort_silos: 5}", "{min_cohort_silos: 10}")],
            "Rule cohort-rule: the minimum number of contributing silos rises from 5 to 10.",
            T,
        ),
        (
            [("{min_cohort_silos: 5}", "{min_cohort_silos: 3}")],
            "Rule cohort-rule: the minimum number of contributing silos falls from 5 to 3.",
            L,
        ),
        (
            [("conditions: {min_cohort_silos: 5}", "conditions: {}")],
            "Rule cohort-rule no longer requires a minimum number of silos (was 5).",
            L,
        ),
        (
            [
                (
                    "conditions: {compression_required: true}",
                    "conditions: {compression_required: true, min_cohort_silos: 4}",
                )
            ],
            "Rule compression-rule now requires at least 4 silos to have contributed.",
            T,
        ),
        (
            [("max_epsilon: 3,", "max_epsilon: 5,")],
            "Rule privacy-rule: the privacy limit ε rises from 3 to 5.",
            L,
        ),
        (
            [("max_delta: 1e-5,", "max_delta: 1e-6,")],
            "Rule privacy-rule: the privacy limit δ falls from 0.00001 to 0.000001.",
            T,
        ),
        (
            [("period_days: 90}", "period_days: 365}")],
            "Rule privacy-rule: the privacy limits now apply to any 365 days (was 90).",
            T,
        ),
        (
            [
                (
                    "      differential_privacy: {max_epsilon: 3, max_delta: 1e-5, period_days: 90}\n",
                    "      compression_required: false\n",
                )
            ],
            "Rule privacy-rule no longer requires differential privacy.",
            L,
        ),
        (
            [("conditions: {compression_required: true}", "conditions: {compression_required: false}")],
            "Rule compression-rule no longer requires compression before sending.",
            L,
        ),
        (
            [('["head/*", "adapter_?/kernel"]', '["head/*", "adapter_?/kernel", "embedding/*"]')],
            "Rule layers-rule: the model layers embedding/* must now also stay local.",
            T,
        ),
        (
            [('["head/*", "adapter_?/kernel"]', '["adapter_?/kernel"]')],
            "Rule layers-rule: the model layers head/* no longer have to stay local.",
            L,
        ),
        (
            [("[silo_ids, host_names]", "[silo_ids]")],
            "Rule metadata-rule: host names no longer have to be removed before sending.",
            L,
        ),
        (
            [("[silo_ids, host_names]", "[silo_ids, host_names, ip_addresses]")],
            "Rule metadata-rule: IP addresses must now also be removed before sending.",
            T,
        ),
        (
            [("hosted_in: [eu-frankfurt]", "hosted_in: [eu-frankfurt, ch-zurich]")],
            "Rule hosting-rule now also allows a receiver hosted in ch-zurich (Zurich).",
            L,
        ),
        (
            [("hosted_in: [eu-frankfurt]}", "hosted_in: [us-east]}")],
            "Rule hosting-rule no longer allows a receiver hosted in eu-frankfurt.",
            T,
        ),
        (
            [("    artifact: aggregate\n", "    artifact: [aggregate, telemetry]\n")],
            "Rule cohort-rule now also allows telemetry.",
            L,
        ),
        (
            [("to: {tier: regional, jurisdiction: eu-eea}", "to: {tier: regional, jurisdiction: EU}")],
            "Rule group-rule now covers what is sent to the EU regional aggregator (was regional "
            "aggregators in the group eu-eea (EU, IS, LI and NO)).",
            T,
        ),
        (
            [('jurisdictions: [EU, IS, LI, "NO"]', 'jurisdictions: [EU, IS, LI, "NO", CH]')],
            "The group eu-eea now also includes CH.",
            L,
        ),
        (
            [("legal_basis: Law 2", "legal_basis: Law 2a")],
            'Rule cohort-rule now cites "Law 2a" as its legal basis (was "Law 2").',
            N,
        ),
        (
            [("rules:\n", "rules:\n" + NEW_RULE)],
            "EU now allows: the EU regional aggregator may send telemetry to the US regional "
            "aggregator, provided that silo identifiers are removed first and the receiving "
            "regional aggregator is hosted in us-east (Virginia) (new rule telemetry-to-us).",
            L,
        ),
        (
            [("  - id: operator-rule\n", "  - id: operator-rule-2\n")],
            "EU no longer allows: the global aggregator may send telemetry to the operator tool of "
            "the federation (rule operator-rule is removed).",
            T,
        ),
        (
            [
                (
                    "restricted_data:\n  - {id: health-stays, data_class: health-records, "
                    "description: Health data stays., legal_basis: Law 1}\n",
                    "",
                )
            ],
            "EU no longer forbids everything derived from health-records data from leaving EU.",
            L,
        ),
        (
            [("data_class: health-records,", "data_class: genomes,")],
            "EU now forbids anything derived from genomes data from leaving EU.",
            T,
        ),
        (
            [('effective_from: "2026-01-01"', 'effective_from: "2027-01-01"')],
            "The policy now takes effect on 2027-01-01 (was 2026-01-01).",
            N,
        ),
        (
            [("owners: [{name: Test owner}]", "owners: [{name: Test owner}, {name: New DPO}]")],
            "New DPO becomes an owner of the policy.",
            N,
        ),
    ],
)
def test_each_change_is_one_sentence(
    conditions_text: str, edits: list[tuple[str, str]], sentence: str, effect: Effect
) -> None:
    changes = changed(conditions_text, *edits)
    assert Change(sentence, effect) in changes, [c.sentence for c in changes]


def test_a_new_version_lists_every_change_once(conditions_text: str) -> None:
    changes = changed(
        conditions_text,
        ("{min_cohort_silos: 5}", "{min_cohort_silos: 10}"),
        ("hosted_in: [eu-frankfurt]", "hosted_in: [eu-frankfurt, ch-zurich]"),
        ("legal_basis: Law 2", "legal_basis: Law 2a"),
    )
    assert len(changes) == 3
    rendered = render_changes(parse_policy(conditions_text), parse_policy(conditions_text), changes)
    assert rendered.splitlines()[:3] == [
        "Policy conditions: version 1 → version 1",
        "",
        "3 changes: 1 loosen, 1 tighten, 1 neither",
    ]
    assert (
        "- [tightens] Rule cohort-rule: the minimum number of contributing silos rises from 5 to 10."
        in rendered
    )
    assert (
        "- [loosens] Rule hosting-rule now also allows a receiver hosted in ch-zurich (Zurich)." in rendered
    )
    assert '- Rule cohort-rule now cites "Law 2a"' in rendered


def test_layout_and_comments_are_no_change(conditions_policy: Policy, conditions_text: str) -> None:
    relaid = parse_policy("# reviewed\n" + conditions_text.replace("max_epsilon: 3,", "max_epsilon: 3.0,"))
    assert diff_policies(conditions_policy, relaid) == []
    assert "No change in meaning" in render_changes(conditions_policy, relaid, [])


def test_a_change_without_a_new_version_number_is_flagged(conditions_text: str) -> None:
    old = parse_policy(conditions_text)
    new = parse_policy(conditions_text.replace("{min_cohort_silos: 5}", "{min_cohort_silos: 6}"))
    sentences = [c.sentence for c in diff_policies(old, new)]
    assert "The version number does not increase (1 → 1) although the policy changed." in sentences
