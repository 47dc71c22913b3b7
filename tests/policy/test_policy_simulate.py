"""`simulate`: a recorded or described flow, decided by the policy of each jurisdiction it
touches; flow records read back into the flows they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jurisfed.policy import DEFAULT_DENY, PolicyError
from jurisfed.policy.flows import flow_from_record, flow_to_record, parse_endpoint
from jurisfed.policy.model import Artifact, Endpoint, Flow, MetadataField, Policy, PrivacySpend, Tier
from jurisfed.policy.simulate import read_flows, render_outcomes, simulate

ROUND = """\
flows:
  - name: EU aggregate of round 12
    artifact: aggregate
    from: EU/regional@eu-frankfurt
    to: GLOBAL/global@ch-zurich
    cohort_silos: 6
    privacy: {epsilon: 2.1, delta: 1.0e-6, period_days: 90}
    compressed: true
    layers: [hidden_1/kernel, hidden_1/bias]
    metadata: []
  - name: US aggregate of round 12, two silos only
    artifact: aggregate
    from: US/regional
    to: GLOBAL/global@ch-zurich
    cohort_silos: 2
    compressed: true
    layers: [hidden_1/kernel]
    metadata: []
  - artifact: model_update
    from: JP/silo
    to: JP/regional
"""


def test_a_recorded_round_is_replayed_against_every_policy_it_touches(
    examples: dict[str, Policy], tmp_path: Path
) -> None:
    path = tmp_path / "round-12.yaml"
    path.write_text(ROUND)
    outcomes = simulate(list(examples.values()), read_flows(path))
    eu, us, jp = outcomes
    assert eu.allowed
    assert [(d.policy_id, d.rule_id) for d in eu.decisions] == [
        ("eu-residency", "eu-aggregates-to-global"),
        ("global-aggregator", "global-accepts-member-aggregates"),
    ]
    assert not us.allowed
    assert [(d.policy_id, d.allowed, d.rule_id, d.condition) for d in us.decisions] == [
        ("us-residency", False, "us-deidentified-aggregates-to-global", "min_cohort_silos"),
        ("global-aggregator", True, "global-accepts-member-aggregates", None),
    ]
    assert not jp.allowed
    assert jp.decisions == ()
    report = render_outcomes(outcomes)
    assert "ALLOWED  EU aggregate of round 12" in report
    assert "REFUSED  US aggregate of round 12, two silos only" in report
    assert (
        "    us-residency v2 refuses by rule us-deidentified-aggregates-to-global: rule "
        "us-deidentified-aggregates-to-global: 2 silo(s) contributed"
    ) in report
    assert "REFUSED  model_update JP/silo -> JP/regional" in report
    assert "no policy given concerns this flow: refused by default" in report
    assert report.endswith("1 of 3 flow(s) allowed, 2 refused.\n")


def test_a_flow_record_reads_back_into_the_same_flow() -> None:
    flow = Flow(
        Artifact.AGGREGATE,
        Endpoint(Tier.REGIONAL, "EU", "eu-frankfurt"),
        Endpoint(Tier.GLOBAL, "GLOBAL", "ch-zurich"),
        cohort_silos=6,
        privacy=PrivacySpend(2.0, 1e-6, 90),
        compressed=True,
        layers=frozenset({"hidden_1/kernel"}),
        metadata_fields=frozenset({MetadataField.SILO_IDS}),
        data_classes=frozenset({"retail"}),
    )
    record = flow_to_record(flow, "one")
    assert flow_from_record(yaml.safe_load(yaml.safe_dump(record)), "here").flow == flow
    bare = Flow(Artifact.TELEMETRY, Endpoint(Tier.SILO, "IN"), Endpoint(Tier.REGIONAL, "IN"))
    assert flow_from_record(flow_to_record(bare), "here").flow == bare


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"artifact": "aggregate", "from": "EU/regional"}, "to is required"),
        (
            {"artifact": "gradients", "from": "EU/regional", "to": "EU/silo"},
            "artifact 'gradients' is not one of",
        ),
        ({"artifact": "aggregate", "from": "eu/regional", "to": "EU/silo"}, "must read JURISDICTION/tier"),
        ({"artifact": "aggregate", "from": "EU/hub", "to": "EU/silo"}, "unknown tier 'hub'"),
        (
            {"artifact": "aggregate", "from": "EU/regional", "to": "EU/silo", "cohort": 3},
            "unknown key(s) cohort",
        ),
        (
            {"artifact": "aggregate", "from": "EU/regional", "to": "EU/silo", "cohort_silos": "3"},
            "must be a whole number",
        ),
        (
            {"artifact": "aggregate", "from": "EU/regional", "to": "EU/silo", "privacy": {"epsilon": 1}},
            "privacy must give",
        ),
        (
            {"artifact": "aggregate", "from": "EU/regional", "to": "EU/silo", "metadata": ["silo_id"]},
            "metadata fields are",
        ),
        (
            {"artifact": "aggregate", "from": "EU/regional", "to": "EU/silo", "compressed": "yes"},
            "true or false",
        ),
        (
            {"artifact": "aggregate", "from": "EU/regional", "to": "EU/silo", "layers": "head/kernel"},
            "list of names",
        ),
    ],
)
def test_malformed_flow_records_are_refused(record: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        flow_from_record(record, "flows[0]")


def test_endpoints_read_like_identities() -> None:
    assert parse_endpoint("GLOBAL/global@ch-zurich") == Endpoint(Tier.GLOBAL, "GLOBAL", "ch-zurich")
    assert parse_endpoint(" EU/silo ") == Endpoint(Tier.SILO, "EU")


def test_an_unreadable_flows_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read flows file"):
        read_flows(tmp_path / "missing.yaml")
    (tmp_path / "flows.yaml").write_text("flows: 3\n")
    with pytest.raises(PolicyError, match="must hold a list of flows"):
        read_flows(tmp_path / "flows.yaml")


def test_default_deny_is_what_an_unknown_jurisdiction_gets(examples: dict[str, Policy]) -> None:
    flow = flow_from_record({"artifact": "model_update", "from": "EU/silo", "to": "XX/regional"}, "x").flow
    [outcome] = simulate(
        [examples["EU"]],
        [flow_from_record({"artifact": "model_update", "from": "EU/silo", "to": "XX/regional"}, "x")],
    )
    assert outcome.decisions[0].rule_id == DEFAULT_DENY
    assert "'XX' is not named anywhere" in outcome.decisions[0].reason
    assert flow.destination.jurisdiction == "XX"
