"""The one decision engine every tier uses: `decide(policy, flow) -> Decision`.

Pure and fail-closed. In order:
1. raw data never moves, whatever any file says;
2. a jurisdiction the policy never names is refused;
3. an artifact derived from a restricted data class never leaves the policy's jurisdiction;
4. the first rule covering the flow whose conditions all hold allows it;
5. otherwise the flow is refused: by the first covering rule and the condition that failed,
   or, when no rule covers it, by the default deny.
Any fact a condition needs but the flow leaves unknown refuses the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jurisfed.policy.model import (
    DEFAULT_DENY,
    RAW_DATA_NEVER_MOVES,
    Artifact,
    Conditions,
    Decision,
    Endpoint,
    Flow,
    MetadataField,
    Policy,
    PrivacyLimit,
    Rule,
)

__all__ = ["Requirements", "concerns", "decide", "requirements"]

_HOSTING = "hosted_in"


def decide(policy: Policy, flow: Flow) -> Decision:
    """Whether `policy` lets `flow` happen. Never raises: an error in evaluation is a deny."""
    try:
        return _decide(policy, flow)
    except Exception as error:  # fail closed: whatever went wrong, nothing flows
        return deny(policy, DEFAULT_DENY, f"the policy engine could not evaluate this flow: {error!r}")


def concerns(policy: Policy, flow: Flow) -> bool:
    """Whether `flow` starts or ends in `policy`'s jurisdiction, so that `policy` must allow it."""
    return policy.jurisdiction in (flow.source.jurisdiction, flow.destination.jurisdiction)


def _decide(policy: Policy, flow: Flow) -> Decision:
    if flow.artifact is Artifact.RAW_DATA:
        return deny(policy, RAW_DATA_NEVER_MOVES, "raw data never leaves the silo that holds it")
    if not (policy.knows(flow.source.jurisdiction) and policy.knows(flow.destination.jurisdiction)):
        return _unknown_jurisdiction(policy, flow)
    if flow.data_classes and flow.destination.jurisdiction != policy.jurisdiction:
        for data_class in sorted(flow.data_classes):
            restriction = policy.restriction(data_class)
            if restriction is not None:
                return deny(
                    policy,
                    restriction.id,
                    f"{flow.artifact.value} derived from {data_class} data may not leave "
                    f"{policy.jurisdiction} ({restriction.legal_basis})",
                    condition="restricted_data",
                )
    first_refusal: Decision | None = None
    for rule in policy.rules_for(flow.artifact):
        if not (rule.source.covers(flow.source) and rule.destination.covers(flow.destination)):
            continue
        failure = _first_failure(rule.conditions, flow)
        if failure is None:
            return policy.allowed_by(rule)
        # The refusal names the first rule that could apply where the receiver is hosted; a
        # rule for other hosting locations is named only when no rule fits the location.
        if first_refusal is None or (first_refusal.condition == _HOSTING and failure[0] != _HOSTING):
            condition, why = failure
            first_refusal = deny(policy, rule.id, f"rule {rule.id}: {why}", condition=condition)
    if first_refusal is not None:
        return first_refusal
    return deny(
        policy,
        DEFAULT_DENY,
        f"no rule of policy {policy.label} allows {flow.artifact.value} from {flow.source} "
        f"to {flow.destination}",
    )


def _unknown_jurisdiction(policy: Policy, flow: Flow) -> Decision:
    end, endpoint = (
        ("source", flow.source)
        if not policy.knows(flow.source.jurisdiction)
        else ("destination", flow.destination)
    )
    return deny(
        policy,
        DEFAULT_DENY,
        f"the {end} jurisdiction {endpoint.jurisdiction!r} is not named anywhere in policy {policy.label}",
    )


def _first_failure(conditions: Conditions, flow: Flow) -> tuple[str, str] | None:
    """(condition name, why) of the first condition `flow` fails, or None when all hold."""
    for name in conditions.checks:
        why = _CHECKS[name](conditions, flow)
        if why is not None:
            return name, why
    return None


def _hosting_failure(conditions: Conditions, flow: Flow) -> str | None:
    if not conditions.hosted_in:
        return None
    location = flow.destination.location
    if location is None:
        return "the destination's hosting location is not known"
    if location not in conditions.hosted_in:
        return f"the destination is hosted in {location}, not in {', '.join(conditions.hosted_in)}"
    return None


def _cohort_failure(conditions: Conditions, flow: Flow) -> str | None:
    minimum = conditions.min_cohort_silos
    if minimum is None:
        return None
    if flow.cohort_silos is None:
        return "the number of silos behind it is not known"
    if flow.cohort_silos < minimum:
        return f"{flow.cohort_silos} silo(s) contributed, at least {minimum} required"
    return None


def _privacy_failure(conditions: Conditions, flow: Flow) -> str | None:
    limit = conditions.differential_privacy
    if limit is None:
        return None
    spend = flow.privacy
    if spend is None:
        return "differential privacy is required and was not applied"
    if spend.period_days < limit.period_days:
        return (
            f"privacy spend was accounted over {spend.period_days} day(s); "
            f"the limit is per {limit.period_days} days"
        )
    if not spend.epsilon <= limit.max_epsilon:  # also refuses NaN
        return f"epsilon spent {spend.epsilon:g} exceeds {limit.max_epsilon:g} per {limit.period_days} days"
    if not spend.delta <= limit.max_delta:
        return f"delta spent {spend.delta:g} exceeds {limit.max_delta:g} per {limit.period_days} days"
    return None


def _compression_failure(conditions: Conditions, flow: Flow) -> str | None:
    if not conditions.compression_required or flow.compressed is True:
        return None
    known = "it is not compressed" if flow.compressed is False else "it is not known to be compressed"
    return f"compression is required and {known}"


def _layers_failure(conditions: Conditions, flow: Flow) -> str | None:
    if not conditions.layers_stay_local:
        return None
    if flow.layers is None:
        return "the layers it carries are not known"
    local = conditions.local_layers(flow.layers)
    return f"it carries layer(s) that must stay local: {', '.join(local)}" if local else None


def _metadata_failure(conditions: Conditions, flow: Flow) -> str | None:
    if not conditions.strip_metadata:
        return None
    if flow.metadata_fields is None:
        return "the metadata it carries is not known"
    present = [f.value for f in conditions.strip_metadata if f in flow.metadata_fields]
    return f"it still carries metadata that must be removed: {', '.join(present)}" if present else None


# By condition name; `Conditions.checks` lists those a rule sets, in the order they are checked.
_CHECKS: dict[str, Callable[[Conditions, Flow], str | None]] = {
    _HOSTING: _hosting_failure,
    "min_cohort_silos": _cohort_failure,
    "differential_privacy": _privacy_failure,
    "compression_required": _compression_failure,
    "layers_stay_local": _layers_failure,
    "strip_metadata": _metadata_failure,
}


def deny(policy: Policy, rule_id: str, reason: str, condition: str | None = None) -> Decision:
    """A refusal under `policy` by its rule `rule_id` (or a built-in one), for `reason`."""
    return Decision(
        allowed=False,
        rule_id=rule_id,
        reason=reason,
        policy_id=policy.id,
        policy_version=policy.version,
        policy_sha256=policy.sha256,
        condition=condition,
    )


@dataclass(frozen=True)
class Requirements:
    """What a sender must do to an artifact before it may go, over every rule covering the flow.

    A regional calls `requirements` before it forwards, applies them (strips the layers and the
    metadata, applies DP and compression), then asks `decide` about the flow it will send.
    """

    rule_ids: tuple[str, ...]
    layers_stay_local: tuple[str, ...]
    strip_metadata: frozenset[MetadataField]
    min_cohort_silos: int | None
    differential_privacy: PrivacyLimit | None
    compression_required: bool
    _conditions: Conditions

    def is_local_layer(self, name: str) -> bool:
        """Whether the tensor `name` must be removed before sending."""
        return bool(self._conditions.local_layers(frozenset({name})))


def requirements(policy: Policy, artifact: Artifact, source: Endpoint, destination: Endpoint) -> Requirements:
    """The strictest of the conditions of every rule covering this movement (nothing if none).

    A rule that only allows receivers hosted elsewhere than the destination's known location
    asks nothing of this movement.
    """
    probe = Flow(artifact, source, destination)
    rules = [
        rule
        for rule in policy.rules_for(artifact)
        if rule.covers(probe) and _could_host(rule.conditions, destination.location)
    ]
    layers = tuple(dict.fromkeys(g for rule in rules for g in rule.conditions.layers_stay_local))
    cohorts = [r.conditions.min_cohort_silos for r in rules if r.conditions.min_cohort_silos is not None]
    limits = [r.conditions.differential_privacy for r in rules if r.conditions.differential_privacy]
    privacy = (
        PrivacyLimit(
            max_epsilon=min(limit.max_epsilon for limit in limits),
            max_delta=min(limit.max_delta for limit in limits),
            period_days=max(limit.period_days for limit in limits),
        )
        if limits
        else None
    )
    return Requirements(
        rule_ids=tuple(rule.id for rule in rules),
        layers_stay_local=layers,
        strip_metadata=frozenset(f for rule in rules for f in rule.conditions.strip_metadata),
        min_cohort_silos=max(cohorts) if cohorts else None,
        differential_privacy=privacy,
        compression_required=any(rule.conditions.compression_required for rule in rules),
        _conditions=Conditions(layers_stay_local=layers),
    )


def _could_host(conditions: Conditions, location: str | None) -> bool:
    return location is None or not conditions.hosted_in or location in conditions.hosted_in


def rules_covering(policy: Policy, flow: Flow) -> tuple[Rule, ...]:
    """Every rule that speaks about `flow`, in file order (for tooling that explains decisions)."""
    return tuple(rule for rule in policy.rules_for(flow.artifact) if rule.covers(flow))
