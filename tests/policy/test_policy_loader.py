"""Reading policy files: every mistake a reviewer can make is a PolicyInvalid that names the
place, YAML is read as a reviewer reads it, and the hash follows meaning, not layout."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from jurisfed.errors import ConfigError
from jurisfed.policy import PolicyError, PolicyInvalid
from jurisfed.policy.canonical import canonical_json, policy_body
from jurisfed.policy.loader import parse_policy, policy_schema, read_document, read_policy
from jurisfed.policy.model import Artifact, MetadataField, Policy, Tier


def test_the_published_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_schema())
    path = Path(__file__).resolve().parents[2] / "jurisfed" / "policy" / "schema.json"
    assert json.loads(path.read_text()) == policy_schema()


def test_the_example_policies_are_valid_and_say_what_the_brief_asks(examples: dict[str, Policy]) -> None:
    assert set(examples) == {"EU", "IN", "US", "GLOBAL"}
    eu = examples["EU"]
    aggregates = eu.rule("eu-aggregates-to-global")
    assert aggregates is not None
    conditions = aggregates.conditions
    assert conditions.min_cohort_silos == 5
    assert conditions.hosted_in == ("eu-frankfurt", "ch-zurich")  # EU or adequacy: no DP asked
    assert conditions.differential_privacy is None
    assert conditions.layers_stay_local == ("head/bias",)
    assert {MetadataField.SILO_IDS, MetadataField.HOST_NAMES} <= set(conditions.strip_metadata)
    elsewhere = eu.rule("eu-private-aggregates-elsewhere")
    assert elsewhere is not None
    private = elsewhere.conditions.differential_privacy
    assert private is not None
    assert (private.max_epsilon, private.period_days) == (3, 90)
    assert elsewhere.conditions.min_cohort_silos == 5
    assert elsewhere.conditions.layers_stay_local == ("head/bias",)
    assert {a for rule in eu.rules for a in rule.artifacts if rule.destination.tiers == (Tier.GLOBAL,)} == {
        Artifact.AGGREGATE,
        Artifact.TELEMETRY,
        Artifact.AUDIT_EVIDENCE,
    }
    assert examples["IN"].restriction("health-records") is not None
    assert examples["GLOBAL"].hosting_location == "ch-zurich"
    assert examples["GLOBAL"].group("federation-members") is not None
    assert eu.retention_days(Tier.REGIONAL, Artifact.MODEL_UPDATE) == 0
    assert eu.retention_days(Tier.GLOBAL, Artifact.MODEL_UPDATE) is None


def test_a_policy_error_is_a_config_error_so_tiers_stop_at_start_up() -> None:
    assert issubclass(PolicyInvalid, PolicyError)
    assert issubclass(PolicyError, ConfigError)


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("version: 1", "version: one", "version: 'one' is not of type 'integer'"),
        ("default: deny", "default: allow", "default: 'deny' was expected"),
        (
            "    conditions: {min_cohort_silos: 5}",
            "    conditions: {min_cohort: 5}",
            "unknown key(s) 'min_cohort'",
        ),
        (
            "    conditions: {min_cohort_silos: 5}",
            "    conditions: {min_cohort_silos: 0}",
            "0 is less than the minimum of 1",
        ),
        (
            "    artifact: aggregate",
            "    artifact: raw_data",
            "raw data never moves; no rule may allow raw_data",
        ),
        (
            "    artifact: aggregate",
            "    artifact: aggregates",
            "'aggregates' is not an artifact; use one of model_update",
        ),
        (
            "to: {tier: global, jurisdiction: GLOBAL}",
            "to: {tier: globe, jurisdiction: GLOBAL}",
            "'globe' is not a tier",
        ),
        (
            "from: {tier: regional, jurisdiction: EU}",
            "from: {tier: regional, jurisdiction: Eu}",
            "'Eu' is neither a jurisdiction code",
        ),
        (
            "jurisdiction: eu-eea}",
            "jurisdiction: eu-eaa}",
            "rules[6].to.jurisdiction: 'eu-eaa' is not a jurisdiction code or a group of this "
            "policy (groups: eu-eea)",
        ),
        (
            "hosted_in: [eu-frankfurt]",
            "hosted_in: [eu-frankfort]",
            "rules[5].conditions.hosted_in: 'eu-frankfort' is not one of the locations",
        ),
        (
            "strip_metadata: [silo_ids, host_names]",
            "strip_metadata: [silo_id]",
            "strip_metadata[0]: 'silo_id' is not one of",
        ),
        (
            "  - id: privacy-rule",
            "  - id: cohort-rule",
            "rules[1].id: id 'cohort-rule' is already used by rules[0].id",
        ),
        ("  - id: privacy-rule", "  - id: default-deny", "'default-deny' is reserved"),
        (
            "{id: health-stays,",
            "{id: hosting-rule,",
            "rules[5].id: id 'hosting-rule' is already used by restricted_data[0].id",
        ),
        ('effective_from: "2026-01-01"', 'effective_from: "2026-02-30"', "'2026-02-30' is not a date"),
        ("max_epsilon: 3,", "max_epsilon: .inf,", "max_epsilon: 'not a finite number'"),
        ("    legal_basis: Law 2\n", "", "rules[0]: 'legal_basis' is required"),
        (
            "description: Aggregates of enough silos may go to the global.",
            "description: '  '",
            "does not match",
        ),
    ],
)
def test_mistakes_are_reported_with_their_place(
    conditions_text: str, old: str, new: str, message: str
) -> None:
    if "inf" in new:
        # .inf is no number in the strict YAML reading: a string, which the schema refuses.
        message = "max_epsilon: '.inf' is not of type 'number'"
    with pytest.raises(PolicyInvalid) as caught:
        parse_policy(edit(conditions_text, old, new), "edited.yaml")
    assert message in str(caught.value)
    assert "policy edited.yaml is invalid" in str(caught.value)


def test_every_problem_is_listed_at_once(conditions_text: str) -> None:
    text = edit(conditions_text, "version: 1", "version: 0")
    text = edit(text, "default: deny", "default: allow")
    with pytest.raises(PolicyInvalid) as caught:
        parse_policy(text)
    assert len(caught.value.problems) == 2


def test_a_file_of_another_kind_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text("format: jurisfed-topology/v1\nglobal: {location: ch-zurich}\n")
    with pytest.raises(PolicyInvalid, match="not a jurisfed policy file"):
        read_policy(path)


def test_unreadable_files_are_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        read_policy(tmp_path / "missing.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="not UTF-8"):
        read_policy(tmp_path / "binary.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(PolicyInvalid, match="must hold a mapping"):
        read_policy(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("policy: [unclosed\n")
    with pytest.raises(PolicyInvalid, match="not valid YAML"):
        read_policy(tmp_path / "broken.yaml")


def test_yaml_reads_as_a_reviewer_reads_it(conditions_policy: Policy, conditions_text: str) -> None:
    group = conditions_policy.group("eu-eea")
    assert group is not None
    # Norway is NO, not false, even unquoted; dates stay as written; 1e-5 is a number.
    unquoted = parse_policy(edit(conditions_text, '"NO"]', "NO]"))
    unquoted_group = unquoted.group("eu-eea")
    assert unquoted_group is not None
    assert unquoted_group.jurisdictions == ("EU", "IS", "LI", "NO")
    assert parse_policy(edit(conditions_text, '"2026-01-01"', "2026-01-01")).effective_from == "2026-01-01"
    rule = conditions_policy.rule("privacy-rule")
    assert rule is not None
    assert rule.conditions.differential_privacy is not None
    assert rule.conditions.differential_privacy.max_delta == 1e-5


def test_yes_and_sexagesimal_are_not_booleans_or_numbers(conditions_text: str) -> None:
    with pytest.raises(PolicyInvalid, match="compression_required: 'yes' is not of type 'boolean'"):
        parse_policy(edit(conditions_text, "compression_required: true", "compression_required: yes"))
    with pytest.raises(PolicyInvalid, match="'1:30' is not of type 'integer'"):
        parse_policy(edit(conditions_text, "version: 1", "version: 1:30"))


def test_a_key_given_twice_is_an_error(conditions_text: str) -> None:
    with pytest.raises(PolicyInvalid, match="key 'min_cohort_silos' appears twice"):
        parse_policy(
            edit(conditions_text, "{min_cohort_silos: 5}", "{min_cohort_silos: 5, min_cohort_silos: 1}")
        )


def test_aliases_are_refused(conditions_text: str) -> None:
    text = edit(
        conditions_text, "conditions: {min_cohort_silos: 5}", "conditions: &strict {min_cohort_silos: 5}"
    )
    text = edit(text, "conditions: {compression_required: true}", "conditions: *strict")
    with pytest.raises(PolicyInvalid, match=r"aliases \(\*name\) are not allowed"):
        parse_policy(text)


def test_the_hash_follows_meaning_not_layout(conditions_text: str, conditions_policy: Policy) -> None:
    document = yaml.safe_load(conditions_text)
    reordered = dict(reversed(list(document.items())))
    relaid = yaml.safe_dump(reordered, default_flow_style=False, sort_keys=False, width=60)
    relaid = "# a comment changes nothing\n" + relaid.replace("max_epsilon: 3", "max_epsilon: 3.0")
    same = parse_policy(relaid)
    assert same.sha256 == conditions_policy.sha256
    assert same.canonical == conditions_policy.canonical
    changed = parse_policy(edit(conditions_text, "Health data stays.", "Health data stays here."))
    assert changed.sha256 != conditions_policy.sha256


def test_the_canonical_form_is_sorted_compact_utf8_json_without_approvals(conditions_policy: Policy) -> None:
    body = json.loads(conditions_policy.canonical)
    assert "approvals" not in body
    assert conditions_policy.canonical == canonical_json(body)
    assert conditions_policy.canonical.startswith(b'{"default":"deny","description"') is False
    assert conditions_policy.canonical.startswith(b'{"default":"deny","effective_from"')
    assert policy_body({"a": 1, "approvals": []}) == {"a": 1}
    assert canonical_json({"b": 1.0, "a": "é"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"x": float("nan")})


def test_read_document_returns_the_validated_mapping(example_dir: Path) -> None:
    document = read_document(example_dir / "eu.yaml")
    assert document["policy"] == "eu-residency"
    assert "approvals" in document
