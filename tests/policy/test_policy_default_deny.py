"""Default deny, as a property: over random policies and random flows, a flow is allowed only
when a rule of the file names it (its artifact, both tiers and both jurisdictions, groups
expanded), never raw data, and a flow no rule names is refused by the default deny.

The oracle reads the policy *document*, not the engine's model of it, so that a mistake in
turning files into rules cannot hide a mistake in deciding.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jurisfed.policy import DEFAULT_DENY, RAW_DATA_NEVER_MOVES, decide
from jurisfed.policy.loader import build_policy
from jurisfed.policy.model import Artifact, Endpoint, Flow, MetadataField, PrivacySpend, Tier

CODES = ["EU", "IN", "US", "GLOBAL", "NO"]
GROUPS = ["eu-eea", "members"]
LOCATIONS = ["eu-frankfurt", "ch-zurich", "us-east"]
MOVABLE = [a.value for a in Artifact if a is not Artifact.RAW_DATA]
TIERS = [t.value for t in Tier]


def one_or_many(values: list[str]) -> st.SearchStrategy[Any]:
    many = st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)
    return st.one_of(st.sampled_from(values), many)


conditions = st.fixed_dictionaries(
    {},
    optional={
        "min_cohort_silos": st.integers(1, 10),
        "differential_privacy": st.fixed_dictionaries(
            {
                "max_epsilon": st.floats(0.1, 10),
                "max_delta": st.floats(0, 1e-3),
                "period_days": st.integers(1, 365),
            }
        ),
        "compression_required": st.booleans(),
        "layers_stay_local": st.lists(
            st.sampled_from(["head/*", "hidden_1/*", "*"]), min_size=1, unique=True
        ),
        "strip_metadata": st.lists(
            st.sampled_from([m.value for m in MetadataField]), min_size=1, unique=True
        ),
        "hosted_in": st.lists(st.sampled_from(LOCATIONS), min_size=1, unique=True),
    },
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    rules = []
    for index in range(draw(st.integers(0, 6))):
        rule: dict[str, Any] = {
            "id": f"rule-{index}",
            "description": "A rule.",
            "legal_basis": "A law.",
            "artifact": draw(one_or_many(MOVABLE)),
            "from": {"tier": draw(one_or_many(TIERS)), "jurisdiction": draw(one_or_many(CODES + GROUPS))},
            "to": {"tier": draw(one_or_many(TIERS)), "jurisdiction": draw(one_or_many(CODES + GROUPS))},
        }
        if draw(st.booleans()):
            rule["conditions"] = draw(conditions)
        rules.append(rule)
    return {
        "format": "jurisfed-residency-policy/v1",
        "policy": "random",
        "version": 1,
        "title": "Random policy",
        "jurisdiction": draw(st.sampled_from(CODES)),
        "effective_from": "2026-01-01",
        "owners": [{"name": "Hypothesis"}],
        "default": "deny",
        "groups": {
            "eu-eea": {"description": "EEA", "jurisdictions": ["EU", "NO"]},
            "members": {
                "description": "Members",
                "jurisdictions": draw(st.lists(st.sampled_from(CODES), min_size=1, unique=True)),
            },
        },
        "locations": {name: {"place": name, "jurisdiction": "EU"} for name in LOCATIONS},
        "restricted_data": [
            {"id": "secret-stays", "data_class": "secret", "description": "Stays.", "legal_basis": "A law."}
        ],
        "rules": rules,
    }


endpoints = st.builds(
    Endpoint,
    st.sampled_from(list(Tier)),
    st.sampled_from([*CODES, "XX"]),
    st.one_of(st.none(), st.sampled_from([*LOCATIONS, "mars-1"])),
)
flows = st.builds(
    Flow,
    st.sampled_from(list(Artifact)),
    endpoints,
    endpoints,
    cohort_silos=st.one_of(st.none(), st.integers(0, 12)),
    privacy=st.one_of(
        st.none(), st.builds(PrivacySpend, st.floats(0, 12), st.floats(0, 1e-3), st.integers(1, 400))
    ),
    compressed=st.one_of(st.none(), st.booleans()),
    layers=st.one_of(
        st.none(), st.frozensets(st.sampled_from(["head/kernel", "hidden_1/kernel", "hidden_2/bias"]))
    ),
    metadata_fields=st.one_of(st.none(), st.frozensets(st.sampled_from(list(MetadataField)))),
    data_classes=st.frozensets(st.sampled_from(["secret", "public"])),
)


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def names(document: dict[str, Any], rule: dict[str, Any], flow: Flow) -> bool:
    """Whether `rule`, as written in `document`, names `flow`."""

    def codes(refs: str | list[str]) -> set[str]:
        groups = document["groups"]
        return {
            code
            for ref in listed(refs)
            for code in (groups[ref]["jurisdictions"] if ref in groups else [ref])
        }

    return (
        flow.artifact.value in listed(rule["artifact"])
        and flow.source.tier.value in listed(rule["from"]["tier"])
        and flow.source.jurisdiction in codes(rule["from"]["jurisdiction"])
        and flow.destination.tier.value in listed(rule["to"]["tier"])
        and flow.destination.jurisdiction in codes(rule["to"]["jurisdiction"])
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], Flow]:
    """A random policy, and a flow that is random, or (mostly) one some rule names, with facts
    that (mostly) meet the conditions, so that allowed flows are as common as refused ones."""
    document = draw(documents())
    flow = draw(flows)
    if not document["rules"] or draw(st.integers(0, 3)) == 0:
        return document, flow
    rule = draw(st.sampled_from(document["rules"]))
    groups = document["groups"]

    def endpoint(side: dict[str, Any]) -> Endpoint:
        codes = sorted(
            {
                c
                for ref in listed(side["jurisdiction"])
                for c in groups.get(ref, {}).get("jurisdictions", [ref])
            }
        )
        return Endpoint(
            Tier(draw(st.sampled_from(listed(side["tier"])))),
            draw(st.sampled_from(codes)),
            draw(st.one_of(st.sampled_from(LOCATIONS), st.none())),
        )

    named = Flow(
        Artifact(draw(st.sampled_from(listed(rule["artifact"])))),
        endpoint(rule["from"]),
        endpoint(rule["to"]),
        cohort_silos=draw(st.one_of(st.integers(8, 12), st.integers(0, 12), st.none())),
        privacy=draw(st.one_of(st.just(PrivacySpend(0.05, 0.0, 400)), flows.map(lambda f: f.privacy))),
        compressed=draw(st.one_of(st.just(True), st.none(), st.booleans())),
        layers=draw(st.one_of(st.just(frozenset[str]()), flows.map(lambda f: f.layers))),
        metadata_fields=draw(
            st.one_of(st.just(frozenset[MetadataField]()), flows.map(lambda f: f.metadata_fields))
        ),
        data_classes=draw(st.one_of(st.just(frozenset[str]()), flows.map(lambda f: f.data_classes))),
    )
    return document, named


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_with_default_deny_nothing_flows_that_no_rule_names(case: tuple[dict[str, Any], Flow]) -> None:
    document, flow = case
    policy = build_policy(document, "random.yaml")
    decision = decide(policy, flow)
    naming = [rule["id"] for rule in document["rules"] if names(document, rule, flow)]
    if decision.allowed:
        assert flow.artifact is not Artifact.RAW_DATA
        assert decision.rule_id in naming
    if not naming:
        assert not decision.allowed
        assert decision.rule_id in (DEFAULT_DENY, RAW_DATA_NEVER_MOVES, "secret-stays")
    if flow.artifact is Artifact.RAW_DATA:
        assert (decision.allowed, decision.rule_id) == (False, RAW_DATA_NEVER_MOVES)
    if "secret" in flow.data_classes and flow.destination.jurisdiction != policy.jurisdiction:
        assert not decision.allowed


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_a_rule_without_conditions_allows_every_flow_it_names(case: tuple[dict[str, Any], Flow]) -> None:
    document, flow = case
    for rule in document["rules"]:
        rule.pop("conditions", None)
    policy = build_policy(document, "random.yaml")
    naming = [rule["id"] for rule in document["rules"] if names(document, rule, flow)]
    blocked = flow.artifact is Artifact.RAW_DATA or (
        "secret" in flow.data_classes and flow.destination.jurisdiction != policy.jurisdiction
    )
    decision = decide(policy, flow)
    known = policy.knows(flow.source.jurisdiction) and policy.knows(flow.destination.jurisdiction)
    assert decision.allowed == (bool(naming) and not blocked and known)
    if decision.allowed:
        assert decision.rule_id == naming[0]
