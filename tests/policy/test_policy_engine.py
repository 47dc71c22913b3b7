"""The decision engine: every condition type and every tier, allowed and refused, each decision
naming the rule that made it; and fail-closed behaviour when facts or names are missing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from jurisfed.auth.identity import Identity
from jurisfed.policy import DEFAULT_DENY, RAW_DATA_NEVER_MOVES, decide, requirements
from jurisfed.policy.engine import concerns
from jurisfed.policy.model import (
    Artifact,
    Endpoint,
    Flow,
    MetadataField,
    Policy,
    PrivacySpend,
    Tier,
)

A = Artifact
EU_SILO = Endpoint(Tier.SILO, "EU")
EU_REGIONAL = Endpoint(Tier.REGIONAL, "EU", "eu-frankfurt")
US_REGIONAL = Endpoint(Tier.REGIONAL, "US", "us-east")
NO_REGIONAL = Endpoint(Tier.REGIONAL, "NO")
GLOBAL_ZURICH = Endpoint(Tier.GLOBAL, "GLOBAL", "ch-zurich")
OPERATORS = Endpoint(Tier.OPERATOR, "GLOBAL")
CLEAN = frozenset[MetadataField]()
SPEND_OK = PrivacySpend(epsilon=2.5, delta=1e-6, period_days=90)


def flow(artifact: Artifact, source: Endpoint, destination: Endpoint, **facts: object) -> Flow:
    return Flow(artifact, source, destination, **facts)  # type: ignore[arg-type]


# (case, flow, allowed, rule id, failed condition)
CONDITION_CASES = [
    # min_cohort_silos
    (
        "cohort of 5 meets 5",
        flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=5),
        True,
        "cohort-rule",
        None,
    ),
    (
        "cohort of 4 misses 5",
        flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=4),
        False,
        "cohort-rule",
        "min_cohort_silos",
    ),
    (
        "cohort unknown",
        flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH),
        False,
        "cohort-rule",
        "min_cohort_silos",
    ),
    # differential_privacy
    (
        "dp within limits",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=SPEND_OK),
        True,
        "privacy-rule",
        None,
    ),
    (
        "dp at the limits",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=PrivacySpend(3.0, 1e-5, 90)),
        True,
        "privacy-rule",
        None,
    ),
    (
        "dp counted over a longer period",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=PrivacySpend(3.0, 1e-5, 365)),
        True,
        "privacy-rule",
        None,
    ),
    (
        "no dp applied",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH),
        False,
        "privacy-rule",
        "differential_privacy",
    ),
    (
        "epsilon too high",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=PrivacySpend(3.01, 1e-6, 90)),
        False,
        "privacy-rule",
        "differential_privacy",
    ),
    (
        "delta too high",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=PrivacySpend(1.0, 1e-4, 90)),
        False,
        "privacy-rule",
        "differential_privacy",
    ),
    (
        "spend counted over too short a period",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=PrivacySpend(1.0, 1e-6, 30)),
        False,
        "privacy-rule",
        "differential_privacy",
    ),
    (
        "epsilon NaN",
        flow(A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH, privacy=PrivacySpend(math.nan, 1e-6, 90)),
        False,
        "privacy-rule",
        "differential_privacy",
    ),
    # compression_required
    (
        "compressed",
        flow(A.TELEMETRY, EU_REGIONAL, GLOBAL_ZURICH, compressed=True),
        True,
        "compression-rule",
        None,
    ),
    (
        "not compressed",
        flow(A.TELEMETRY, EU_REGIONAL, GLOBAL_ZURICH, compressed=False),
        False,
        "compression-rule",
        "compression_required",
    ),
    (
        "compression unknown",
        flow(A.TELEMETRY, EU_REGIONAL, GLOBAL_ZURICH),
        False,
        "compression-rule",
        "compression_required",
    ),
    # layers_stay_local
    (
        "shared layers only",
        flow(
            A.PERSONALIZED_MODEL,
            EU_REGIONAL,
            US_REGIONAL,
            layers=frozenset({"hidden_1/kernel", "hidden_1/bias"}),
        ),
        True,
        "layers-rule",
        None,
    ),
    (
        "a head layer present",
        flow(
            A.PERSONALIZED_MODEL, EU_REGIONAL, US_REGIONAL, layers=frozenset({"hidden_1/kernel", "head/bias"})
        ),
        False,
        "layers-rule",
        "layers_stay_local",
    ),
    (
        "a ?-pattern layer present",
        flow(A.PERSONALIZED_MODEL, EU_REGIONAL, US_REGIONAL, layers=frozenset({"adapter_1/kernel"})),
        False,
        "layers-rule",
        "layers_stay_local",
    ),
    (
        "layers unknown",
        flow(A.PERSONALIZED_MODEL, EU_REGIONAL, US_REGIONAL),
        False,
        "layers-rule",
        "layers_stay_local",
    ),
    # strip_metadata
    (
        "metadata stripped",
        flow(
            A.AUDIT_EVIDENCE,
            EU_REGIONAL,
            GLOBAL_ZURICH,
            metadata_fields=frozenset({MetadataField.PER_SILO_METRICS}),
        ),
        True,
        "metadata-rule",
        None,
    ),
    (
        "silo ids still there",
        flow(
            A.AUDIT_EVIDENCE, EU_REGIONAL, GLOBAL_ZURICH, metadata_fields=frozenset({MetadataField.SILO_IDS})
        ),
        False,
        "metadata-rule",
        "strip_metadata",
    ),
    (
        "host names still there",
        flow(
            A.AUDIT_EVIDENCE,
            EU_REGIONAL,
            GLOBAL_ZURICH,
            metadata_fields=frozenset({MetadataField.HOST_NAMES}),
        ),
        False,
        "metadata-rule",
        "strip_metadata",
    ),
    (
        "metadata unknown",
        flow(A.AUDIT_EVIDENCE, EU_REGIONAL, GLOBAL_ZURICH),
        False,
        "metadata-rule",
        "strip_metadata",
    ),
    # hosted_in
    ("regional in Frankfurt", flow(A.MODEL_UPDATE, EU_SILO, EU_REGIONAL), True, "hosting-rule", None),
    (
        "regional in Virginia",
        flow(A.MODEL_UPDATE, EU_SILO, Endpoint(Tier.REGIONAL, "EU", "us-east")),
        False,
        "hosting-rule",
        "hosted_in",
    ),
    (
        "regional somewhere never named",
        flow(A.MODEL_UPDATE, EU_SILO, Endpoint(Tier.REGIONAL, "EU", "mars-1")),
        False,
        "hosting-rule",
        "hosted_in",
    ),
    (
        "regional location unknown",
        flow(A.MODEL_UPDATE, EU_SILO, Endpoint(Tier.REGIONAL, "EU")),
        False,
        "hosting-rule",
        "hosted_in",
    ),
    # jurisdiction groups
    ("group member", flow(A.MODEL_CHECKPOINT, GLOBAL_ZURICH, NO_REGIONAL), True, "group-rule", None),
    ("group member EU", flow(A.MODEL_CHECKPOINT, GLOBAL_ZURICH, EU_REGIONAL), True, "group-rule", None),
    ("not a group member", flow(A.MODEL_CHECKPOINT, GLOBAL_ZURICH, US_REGIONAL), False, DEFAULT_DENY, None),
    # restricted data classes
    (
        "restricted data class stays",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            GLOBAL_ZURICH,
            cohort_silos=9,
            data_classes=frozenset({"health-records"}),
        ),
        False,
        "health-stays",
        "restricted_data",
    ),
    (
        "other data class may go",
        flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=9, data_classes=frozenset({"retail"})),
        True,
        "cohort-rule",
        None,
    ),
    (
        "restricted data class within EU",
        flow(A.MODEL_UPDATE, EU_SILO, EU_REGIONAL, data_classes=frozenset({"health-records"})),
        True,
        "hosting-rule",
        None,
    ),
    # every tier, as source and destination, and the default
    (
        "operators get telemetry from the global",
        flow(A.TELEMETRY, GLOBAL_ZURICH, OPERATORS),
        True,
        "operator-rule",
        None,
    ),
    (
        "operators get no checkpoints",
        flow(A.MODEL_CHECKPOINT, GLOBAL_ZURICH, OPERATORS),
        False,
        DEFAULT_DENY,
        None,
    ),
    ("silo to silo", flow(A.MODEL_UPDATE, EU_SILO, Endpoint(Tier.SILO, "EU")), False, DEFAULT_DENY, None),
    ("silo straight to the global", flow(A.MODEL_UPDATE, EU_SILO, GLOBAL_ZURICH), False, DEFAULT_DENY, None),
    ("raw data, anywhere", flow(A.RAW_DATA, EU_SILO, EU_REGIONAL), False, RAW_DATA_NEVER_MOVES, None),
    (
        "unknown source jurisdiction",
        flow(A.MODEL_UPDATE, Endpoint(Tier.SILO, "XX"), EU_REGIONAL),
        False,
        DEFAULT_DENY,
        None,
    ),
    (
        "unknown destination jurisdiction",
        flow(A.AGGREGATE, EU_REGIONAL, Endpoint(Tier.GLOBAL, "ZZ"), cohort_silos=9),
        False,
        DEFAULT_DENY,
        None,
    ),
]


@pytest.mark.parametrize(
    ("flow_", "allowed", "rule_id", "condition"),
    [pytest.param(*case[1:], id=case[0]) for case in CONDITION_CASES],
)
def test_each_condition_allows_and_refuses_naming_its_rule(
    conditions_policy: Policy, flow_: Flow, allowed: bool, rule_id: str, condition: str | None
) -> None:
    decision = decide(conditions_policy, flow_)
    assert decision.allowed is allowed, decision.reason
    assert decision.rule_id == rule_id
    assert decision.condition == condition
    assert decision.policy_id == "conditions"
    assert decision.policy_sha256 == conditions_policy.sha256
    if not allowed and rule_id not in (DEFAULT_DENY, RAW_DATA_NEVER_MOVES):
        assert rule_id in decision.reason or "may not leave" in decision.reason


def test_refusals_say_why_in_a_sentence(conditions_policy: Policy) -> None:
    cases = {
        flow(
            A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=4
        ): "4 silo(s) contributed, at least 5 required",
        flow(
            A.MODEL_UPDATE, EU_SILO, Endpoint(Tier.REGIONAL, "EU", "us-east")
        ): "hosted in us-east, not in eu-frankfurt",
        flow(
            A.PERSONALIZED_MODEL, EU_REGIONAL, US_REGIONAL, layers=frozenset({"head/bias"})
        ): "must stay local: head/bias",
        flow(
            A.MODEL_CHECKPOINT, EU_REGIONAL, GLOBAL_ZURICH
        ): "differential privacy is required and was not applied",
        flow(A.MODEL_UPDATE, Endpoint(Tier.SILO, "XX"), EU_REGIONAL): "source jurisdiction 'XX' is not named",
        flow(
            A.MODEL_UPDATE, EU_SILO, GLOBAL_ZURICH
        ): "no rule of policy conditions v1 (EU) allows model_update",
    }
    for case, expected in cases.items():
        assert expected in decide(conditions_policy, case).reason


# Real flows of the demo federation under the committed example policies, tier by tier.
EXAMPLE_CASES = [
    ("EU", flow(A.MODEL_UPDATE, EU_SILO, EU_REGIONAL), True, "eu-updates-to-eu-regional"),
    ("EU", flow(A.MODEL_UPDATE, EU_SILO, US_REGIONAL), False, DEFAULT_DENY),
    ("US", flow(A.MODEL_UPDATE, EU_SILO, US_REGIONAL), False, DEFAULT_DENY),
    ("EU", flow(A.PERSONALIZED_MODEL, EU_REGIONAL, EU_SILO), True, "eu-models-to-eu-silos"),
    ("EU", flow(A.PERSONALIZED_MODEL, EU_REGIONAL, GLOBAL_ZURICH), False, DEFAULT_DENY),
    (
        "EU",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            GLOBAL_ZURICH,
            cohort_silos=5,
            privacy=SPEND_OK,
            compressed=True,
            layers=frozenset({"hidden_1/kernel"}),
            metadata_fields=CLEAN,
        ),
        True,
        "eu-aggregates-to-global",
    ),
    (
        "EU",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            GLOBAL_ZURICH,
            cohort_silos=3,
            privacy=SPEND_OK,
            compressed=True,
            layers=frozenset({"hidden_1/kernel"}),
            metadata_fields=CLEAN,
        ),
        False,
        "eu-aggregates-to-global",
    ),
    (
        "EU",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            replace(GLOBAL_ZURICH, location="us-east"),
            cohort_silos=5,
            privacy=SPEND_OK,
            compressed=True,
            layers=frozenset(),
            metadata_fields=CLEAN,
        ),
        True,
        "eu-private-aggregates-elsewhere",
    ),
    (
        "EU",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            replace(GLOBAL_ZURICH, location="us-east"),
            cohort_silos=5,
            compressed=True,
            layers=frozenset(),
            metadata_fields=CLEAN,
        ),
        False,
        "eu-private-aggregates-elsewhere",
    ),
    (
        "EU",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            replace(GLOBAL_ZURICH, location="sg-singapore"),
            cohort_silos=5,
            privacy=SPEND_OK,
            compressed=True,
            layers=frozenset(),
            metadata_fields=CLEAN,
        ),
        False,
        "eu-aggregates-to-global",
    ),
    (
        "EU",
        flow(
            A.AGGREGATE,
            EU_REGIONAL,
            GLOBAL_ZURICH,
            cohort_silos=5,
            compressed=True,
            layers=frozenset({"head/kernel", "head/bias"}),
            metadata_fields=CLEAN,
        ),
        False,
        "eu-aggregates-to-global",
    ),
    (
        "GLOBAL",
        flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, compressed=True, metadata_fields=CLEAN),
        True,
        "global-accepts-member-aggregates",
    ),
    (
        "GLOBAL",
        flow(
            A.AGGREGATE, Endpoint(Tier.REGIONAL, "JP"), GLOBAL_ZURICH, compressed=True, metadata_fields=CLEAN
        ),
        False,
        DEFAULT_DENY,
    ),
    ("GLOBAL", flow(A.MODEL_CHECKPOINT, GLOBAL_ZURICH, EU_REGIONAL), True, "global-model-to-members"),
    ("GLOBAL", flow(A.TELEMETRY, GLOBAL_ZURICH, OPERATORS), True, "global-metrics-to-operators"),
    ("EU", flow(A.MODEL_CHECKPOINT, GLOBAL_ZURICH, EU_REGIONAL), True, "eu-shared-model-from-global"),
    (
        "IN",
        flow(
            A.AGGREGATE,
            Endpoint(Tier.REGIONAL, "IN"),
            GLOBAL_ZURICH,
            cohort_silos=3,
            compressed=True,
            metadata_fields=CLEAN,
        ),
        True,
        "in-aggregates-to-named-locations",
    ),
    (
        "IN",
        flow(
            A.AGGREGATE,
            Endpoint(Tier.REGIONAL, "IN"),
            GLOBAL_ZURICH,
            cohort_silos=3,
            compressed=True,
            metadata_fields=CLEAN,
            data_classes=frozenset({"health-records"}),
        ),
        False,
        "in-health-records-stay-in-india",
    ),
    (
        "IN",
        flow(
            A.AGGREGATE,
            Endpoint(Tier.REGIONAL, "IN"),
            replace(GLOBAL_ZURICH, location="eu-frankfurt"),
            cohort_silos=3,
            compressed=True,
            metadata_fields=CLEAN,
        ),
        False,
        "in-aggregates-to-named-locations",
    ),
    (
        "US",
        flow(A.AGGREGATE, US_REGIONAL, GLOBAL_ZURICH, cohort_silos=3, compressed=True, metadata_fields=CLEAN),
        True,
        "us-deidentified-aggregates-to-global",
    ),
    (
        "US",
        flow(A.AGGREGATE, US_REGIONAL, GLOBAL_ZURICH, cohort_silos=2, compressed=True, metadata_fields=CLEAN),
        False,
        "us-deidentified-aggregates-to-global",
    ),
]


@pytest.mark.parametrize(
    ("jurisdiction", "flow_", "allowed", "rule_id"),
    [
        pytest.param(*case, id=f"{case[0]}:{case[3]}:{'allow' if case[2] else 'deny'}")
        for case in EXAMPLE_CASES
    ],
)
def test_example_policies_decide_the_federations_flows(
    examples: dict[str, Policy], jurisdiction: str, flow_: Flow, allowed: bool, rule_id: str
) -> None:
    decision = decide(examples[jurisdiction], flow_)
    assert (decision.allowed, decision.rule_id) == (allowed, rule_id), decision.reason


def test_an_endpoint_takes_its_jurisdiction_from_the_authenticated_identity() -> None:
    identity = Identity.parse("jurisfed://EU/silo/hospital-a")
    assert Endpoint.of(identity) == EU_SILO
    assert Endpoint.of(Identity.parse("jurisfed://GLOBAL/global/main"), "ch-zurich") == GLOBAL_ZURICH


def test_the_first_rule_whose_conditions_hold_decides(conditions_text: str) -> None:
    from jurisfed.policy.loader import parse_policy

    looser = conditions_text + (
        "  - id: looser-cohort-rule\n"
        "    description: Aggregates of two silos may also go.\n"
        "    legal_basis: Law 10\n"
        "    artifact: aggregate\n"
        "    from: {tier: regional, jurisdiction: EU}\n"
        "    to: {tier: global, jurisdiction: GLOBAL}\n"
        "    conditions: {min_cohort_silos: 2}\n"
    )
    policy = parse_policy(looser)
    assert (
        decide(policy, flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=6)).rule_id == "cohort-rule"
    )
    assert (
        decide(policy, flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=3)).rule_id
        == "looser-cohort-rule"
    )
    refused = decide(policy, flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos=1))
    assert (refused.allowed, refused.rule_id) == (False, "cohort-rule")


def test_an_error_while_deciding_is_a_refusal(conditions_policy: Policy) -> None:
    broken = Flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH, cohort_silos="many")  # type: ignore[arg-type]
    decision = decide(conditions_policy, broken)
    assert not decision.allowed
    assert decision.rule_id == DEFAULT_DENY
    assert "could not evaluate" in decision.reason


def test_requirements_say_what_to_strip_before_sending(examples: dict[str, Policy]) -> None:
    needs = requirements(examples["EU"], A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH)
    assert needs.rule_ids == ("eu-aggregates-to-global",)  # the DP rule is for other hosts
    assert needs.is_local_layer("head/bias")
    assert not needs.is_local_layer("head/kernel")
    assert not needs.is_local_layer("hidden_1/kernel")
    assert MetadataField.SILO_IDS in needs.strip_metadata
    assert needs.min_cohort_silos == 5
    assert needs.compression_required
    assert needs.differential_privacy is None
    elsewhere = requirements(
        examples["EU"], A.AGGREGATE, EU_REGIONAL, replace(GLOBAL_ZURICH, location="us-east")
    )
    assert elsewhere.rule_ids == ("eu-private-aggregates-elsewhere",)
    assert elsewhere.differential_privacy is not None
    assert elsewhere.differential_privacy.max_epsilon == 3
    assert elsewhere.differential_privacy.period_days == 90
    unknown_host = requirements(
        examples["EU"], A.AGGREGATE, EU_REGIONAL, replace(GLOBAL_ZURICH, location=None)
    )
    assert unknown_host.rule_ids == ("eu-aggregates-to-global", "eu-private-aggregates-elsewhere")
    nothing = requirements(examples["EU"], A.AGGREGATE, EU_REGIONAL, Endpoint(Tier.SILO, "EU"))
    assert nothing.rule_ids == ()
    assert not nothing.is_local_layer("head/bias")


def test_a_policy_concerns_flows_that_start_or_end_in_its_jurisdiction(examples: dict[str, Policy]) -> None:
    outbound = flow(A.AGGREGATE, EU_REGIONAL, GLOBAL_ZURICH)
    assert concerns(examples["EU"], outbound)
    assert concerns(examples["GLOBAL"], outbound)
    assert not concerns(examples["US"], outbound)
