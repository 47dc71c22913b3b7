"""`check --topology`: flows the federation needs that no rule allows, rules that can never
decide, and rules whose different conditions let the looser one win."""

from __future__ import annotations

from pathlib import Path

import pytest

from jurisfed.policy import PolicyError
from jurisfed.policy.loader import parse_policy
from jurisfed.policy.model import Policy
from jurisfed.policy.topology import FindingKind, Topology, analyse, read_topology

DEMO = Topology(
    global_location="ch-zurich",
    regional_locations={"EU": "eu-frankfurt", "IN": "in-mumbai", "US": "us-east"},
)


def test_the_example_policies_fit_the_demo_federation(examples: dict[str, Policy], example_dir: Path) -> None:
    topology = read_topology(example_dir / "topology" / "demo.yaml")
    assert topology == DEMO
    for policy in examples.values():
        findings = analyse(policy, topology)
        if policy.jurisdiction == "EU":
            # EU's rule for hosts without an adequacy decision has nothing to do while the global
            # runs in Zurich: reported as dead here, which `check` notes without failing.
            assert [(f.kind, f.rule_ids) for f in findings] == [
                (FindingKind.DEAD, ("eu-private-aggregates-elsewhere",))
            ]
        else:
            assert findings == [], policy.id


def test_a_global_moved_where_eu_does_not_allow_is_reported(examples: dict[str, Policy]) -> None:
    moved = Topology("us-east", DEMO.regional_locations)
    findings = analyse(examples["EU"], moved)
    missing = [f for f in findings if f.kind is FindingKind.MISSING]
    # Aggregates may still go to us-east, with differential privacy (eu-private-aggregates-elsewhere).
    assert {f.message.split(",")[0] for f in missing} == {
        "the federation needs telemetry from EU/regional@eu-frankfurt to GLOBAL/global@us-east",
        "the federation needs audit evidence from EU/regional@eu-frankfurt to GLOBAL/global@us-east",
    }
    assert any(
        "allow it only to a receiver hosted elsewhere, and it runs in us-east" in f.message for f in missing
    )
    dead = [f for f in findings if f.kind is FindingKind.DEAD]
    assert {f.rule_ids for f in dead} == {
        ("eu-aggregates-to-global",),
        ("eu-telemetry-to-global",),
        ("eu-evidence-to-global",),
    }


def test_a_member_the_global_does_not_know_is_reported(examples: dict[str, Policy]) -> None:
    bigger = Topology("ch-zurich", {**DEMO.regional_locations, "JP": "jp-tokyo"})
    messages = [f.message for f in analyse(examples["GLOBAL"], bigger)]
    assert (
        "the federation needs aggregates from JP/regional@jp-tokyo to GLOBAL/global@ch-zurich, but policy "
        "global-aggregator v1 (GLOBAL) refuses it: no rule covers it"
    ) in messages


def test_a_rule_no_flow_matches_is_dead(conditions_policy: Policy) -> None:
    findings = analyse(conditions_policy, Topology("ch-zurich", {"EU": "eu-frankfurt"}))
    dead = {f.rule_ids[0]: f.message for f in findings if f.kind is FindingKind.DEAD}
    # EU regionals never send personalized models to the US regional: nothing in the topology does.
    assert "layers-rule" in dead
    assert dead["layers-rule"].startswith("rule layers-rule can never apply in this federation")


def test_a_rule_shadowed_by_an_earlier_looser_one_is_dead(conditions_text: str) -> None:
    text = conditions_text.replace(
        "rules:\n",
        "rules:\n"
        "  - id: anything-to-global\n"
        "    description: Aggregates and evidence may go to the global.\n"
        "    legal_basis: Law 0\n"
        "    artifact: [aggregate, audit_evidence]\n"
        "    from: {tier: regional, jurisdiction: EU}\n"
        "    to: {tier: global, jurisdiction: GLOBAL}\n"
        "    conditions: {min_cohort_silos: 2}\n",
    )
    findings = analyse(parse_policy(text), DEMO)
    dead = [f for f in findings if f.kind is FindingKind.DEAD and "never decides" in f.message]
    assert [f.rule_ids for f in dead] == [("cohort-rule", "anything-to-global")]
    assert dead[0].message == (
        "rule cohort-rule never decides anything: rule anything-to-global, before it, covers every flow it "
        "covers and asks no more of them"
    )
    conflicts = [f for f in findings if f.kind is FindingKind.CONFLICT]
    assert [f.rule_ids for f in conflicts] == [("anything-to-global", "metadata-rule")]
    assert "anything-to-global does not remove silo identifiers and host names" in conflicts[0].message


def test_overlapping_rules_with_different_conditions_conflict(conditions_text: str) -> None:
    text = conditions_text + (
        "  - id: dp-free-aggregates\n"
        "    description: Aggregates may go to the global without DP.\n"
        "    legal_basis: Law 12\n"
        "    artifact: aggregate\n"
        "    from: {tier: regional, jurisdiction: eu-eea}\n"
        "    to: {tier: global, jurisdiction: GLOBAL}\n"
        "    conditions: {min_cohort_silos: 3, hosted_in: [ch-zurich]}\n"
    )
    findings = analyse(parse_policy(text), DEMO)
    conflicts = [f for f in findings if f.kind is FindingKind.CONFLICT]
    assert [f.rule_ids for f in conflicts] == [("cohort-rule", "dp-free-aggregates")]
    message = conflicts[0].message
    assert message.startswith(
        "rules cohort-rule and dp-free-aggregates both cover aggregates from EU to GLOBAL but ask different "
        "things, so the looser one decides:"
    )
    assert "dp-free-aggregates needs 3 silos where cohort-rule needs 5" in message
    assert "cohort-rule allows a receiver hosted anywhere" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format: jurisfed-topology/v1\njurisdictions: {}\n", "non-empty mapping"),
        ("format: something-else\n", "format: jurisfed-topology/v1"),
        ("format: jurisfed-topology/v1\nglobals: {}\njurisdictions: {EU: {}}\n", "unknown key(s) globals"),
        ("[unclosed\n", "not valid YAML"),
    ],
)
def test_bad_topology_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_topology(path)
