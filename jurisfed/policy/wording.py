"""Plain-language phrases for what a policy says, shared by `explain` and `diff`.

Everything here returns plain text (no Markdown, no HTML); the renderers escape and style it.
"""

from __future__ import annotations

from jurisfed.policy.model import (
    GLOBAL_JURISDICTION,
    Artifact,
    Conditions,
    EndpointScope,
    MetadataField,
    Policy,
    PrivacyLimit,
    Rule,
    Tier,
)

ARTIFACT_NOUNS: dict[Artifact, str] = {
    Artifact.RAW_DATA: "raw data",
    Artifact.MODEL_UPDATE: "model updates",
    Artifact.AGGREGATE: "aggregates",
    Artifact.MODEL_CHECKPOINT: "model checkpoints",
    Artifact.PERSONALIZED_MODEL: "personalized models",
    Artifact.TELEMETRY: "telemetry",
    Artifact.AUDIT_EVIDENCE: "audit evidence",
}

ARTIFACT_MEANINGS: dict[Artifact, str] = {
    Artifact.RAW_DATA: "the records themselves (patients, customers, readings); they never move",
    Artifact.MODEL_UPDATE: "what one silo learned in one round: a change to the model's numbers",
    Artifact.AGGREGATE: "the combined updates of many silos of one jurisdiction",
    Artifact.MODEL_CHECKPOINT: "the shared model as the federation trained it",
    Artifact.PERSONALIZED_MODEL: "a jurisdiction's own version of the model, with its local layers",
    Artifact.TELEMETRY: "operational metrics: progress, accuracy, bytes sent, health",
    Artifact.AUDIT_EVIDENCE: "the record of every decision the policy engine made",
}

TIER_MEANINGS: dict[Tier, str] = {
    Tier.SILO: "a site holding data (a hospital, a bank branch) that trains the model beside it",
    Tier.REGIONAL: "the aggregator of one jurisdiction, which combines its silos' updates",
    Tier.GLOBAL: "the aggregator that combines the jurisdictions' aggregates",
    Tier.OPERATOR: "the tools of the team running the federation",
}

METADATA_NOUNS: dict[MetadataField, str] = {
    MetadataField.SILO_IDS: "silo identifiers",
    MetadataField.HOST_NAMES: "host names",
    MetadataField.IP_ADDRESSES: "IP addresses",
    MetadataField.PER_SILO_EXAMPLE_COUNTS: "per-silo example counts",
    MetadataField.PER_SILO_METRICS: "per-silo metrics",
}

_TIER_SINGULAR = {
    Tier.SILO: "silo",
    Tier.REGIONAL: "regional aggregator",
    Tier.GLOBAL: "global aggregator",
    Tier.OPERATOR: "operator tool",
}
_TIER_PLURAL = {
    Tier.SILO: "silos",
    Tier.REGIONAL: "regional aggregators",
    Tier.GLOBAL: "global aggregators",
    Tier.OPERATOR: "operator tools",
}


def join(items: list[str], word: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def artifacts(kinds: tuple[Artifact, ...]) -> str:
    return join([ARTIFACT_NOUNS[kind] for kind in kinds])


def jurisdiction(policy: Policy, ref: str) -> str:
    """'EU', or 'the group eu-eea (EU, IS, LI and NO)'."""
    group = policy.group(ref)
    if group is None:
        return ref
    return f"the group {ref} ({join(list(group.jurisdictions))})"


def party(policy: Policy, scope: EndpointScope) -> str:
    """'EU silos', 'the EU regional aggregator', 'the global aggregator', 'silos in EU or IN', ..."""
    written = scope.written
    plural = len(scope.tiers) > 1 or len(written) > 1 or policy.group(written[0]) is not None
    nouns = join([(_TIER_PLURAL if plural or t is Tier.SILO else _TIER_SINGULAR)[t] for t in scope.tiers])
    if written == (GLOBAL_JURISDICTION,):
        return "the global aggregator" if scope.tiers == (Tier.GLOBAL,) else f"the {nouns} of the federation"
    if len(written) == 1 and policy.group(written[0]) is None:
        return f"{written[0]} {nouns}" if Tier.SILO in scope.tiers else f"the {written[0]} {nouns}"
    return f"{nouns} in {join([jurisdiction(policy, ref) for ref in written], 'or')}"


def location(policy: Policy, name: str) -> str:
    found = policy.location(name)
    return f"{name} ({found.place})" if found else name


def number(value: float) -> str:
    """3 -> '3', 0.5 -> '0.5', 1e-05 -> '0.00001': no exponents for readers."""
    return f"{value:.15f}".rstrip("0").rstrip(".") if value < 1e-4 else f"{value:g}"


def privacy(limit: PrivacyLimit) -> str:
    return (
        f"differential privacy was applied, spending no more than ε = {number(limit.max_epsilon)} and "
        f"δ = {number(limit.max_delta)} in any {limit.period_days} days"
    )


def conditions(policy: Policy, rule: Rule) -> list[str]:
    """Each condition of `rule` as a clause that completes 'provided that ...'."""
    c: Conditions = rule.conditions
    clauses: list[str] = []
    if c.min_cohort_silos is not None:
        clauses.append(
            f"at least {c.min_cohort_silos} silo{'s' if c.min_cohort_silos != 1 else ''} contributed"
        )
    if c.differential_privacy is not None:
        clauses.append(privacy(c.differential_privacy))
    if c.compression_required:
        clauses.append("it is compressed (quantized) before it is sent")
    if c.layers_stay_local:
        home = join(list(rule.source.written), "or")
        clauses.append(
            f"the model layers {join(list(c.layers_stay_local))} are removed first (they stay in {home})"
        )
    if c.strip_metadata:
        clauses.append(f"{join([METADATA_NOUNS[f] for f in c.strip_metadata])} are removed first")
    if c.hosted_in:
        places = join([location(policy, name) for name in c.hosted_in], "or")
        clauses.append(f"the receiving {_receiver(rule)} is hosted in {places}")
    return clauses


def _receiver(rule: Rule) -> str:
    tiers = rule.destination.tiers
    return _TIER_SINGULAR[tiers[0]] if len(tiers) == 1 else "node"


def permission(policy: Policy, rule: Rule) -> str:
    """'the regional aggregator in EU may send aggregates to the global aggregator'."""
    source, destination = party(policy, rule.source), party(policy, rule.destination)
    return f"{source} may send {artifacts(rule.artifacts)} to {destination}"


def rule_sentence(policy: Policy, rule: Rule) -> str:
    """The whole rule as one sentence, conditions included, capitalised and with a full stop."""
    return capitalised(permission(policy, rule) + provided(conditions(policy, rule))) + "."


def provided(clauses: list[str]) -> str:
    """', provided that a and b' or ', provided that: a; b; and c' (nothing without clauses)."""
    if not clauses:
        return ""
    if len(clauses) <= 2:
        return ", provided that " + join(clauses)
    return ", provided that: " + "; ".join(clauses[:-1]) + "; and " + clauses[-1]


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
