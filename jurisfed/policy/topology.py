"""Checking a policy against the federation it must serve (`jurisfed policy check --topology`).

A topology file names the jurisdictions and where the aggregators run:

    format: jurisfed-topology/v1
    global: {location: ch-zurich}
    jurisdictions:
      EU: {location: eu-frankfurt}     # where EU's regional aggregator runs
      IN: {location: in-mumbai}

From it follow the flows every jurisfed federation needs, per jurisdiction J: silos of J send
model updates and telemetry to J's regional, which hands them model checkpoints and
personalized models; J's regional sends aggregates, telemetry and audit evidence to the global,
which sends it model checkpoints; the global shows the operators (the central ML team)
telemetry. Three kinds of finding:
- missing: a flow the federation needs that no rule of the policy concerned can allow;
- dead: a rule that can never decide anything here (no flow matches it, its hosting condition
  excludes where the receiver runs, or an earlier rule at most as strict covers all it covers);
- conflict: two rules covering the same flows with different conditions, so that the looser
  one decides and the stricter one's conditions can be sidestepped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jurisfed.policy import wording
from jurisfed.policy.engine import concerns
from jurisfed.policy.errors import PolicyError
from jurisfed.policy.flows import format_endpoint
from jurisfed.policy.model import (
    GLOBAL_JURISDICTION,
    Artifact,
    Conditions,
    Endpoint,
    Flow,
    Policy,
    Rule,
    Tier,
)

__all__ = ["Finding", "FindingKind", "NeededFlow", "Topology", "analyse", "read_topology"]

_LOCAL_DOWN = (Artifact.MODEL_CHECKPOINT, Artifact.PERSONALIZED_MODEL)
_LOCAL_UP = (Artifact.MODEL_UPDATE, Artifact.TELEMETRY)
_CROSS_UP = (Artifact.AGGREGATE, Artifact.TELEMETRY, Artifact.AUDIT_EVIDENCE)


@dataclass(frozen=True)
class NeededFlow:
    description: str
    flow: Flow


@dataclass(frozen=True)
class Topology:
    global_location: str | None
    regional_locations: dict[str, str | None]

    @property
    def jurisdictions(self) -> tuple[str, ...]:
        return tuple(self.regional_locations)

    def needed_flows(self) -> tuple[NeededFlow, ...]:
        flows: list[NeededFlow] = []
        top = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, self.global_location)
        for code, location in self.regional_locations.items():
            silo = Endpoint(Tier.SILO, code)
            regional = Endpoint(Tier.REGIONAL, code, location)
            flows += [
                NeededFlow(_describe(kind, silo, regional), Flow(kind, silo, regional)) for kind in _LOCAL_UP
            ]
            flows += [
                NeededFlow(_describe(kind, regional, silo), Flow(kind, regional, silo))
                for kind in _LOCAL_DOWN
            ]
            flows += [
                NeededFlow(_describe(kind, regional, top), Flow(kind, regional, top)) for kind in _CROSS_UP
            ]
            kind = Artifact.MODEL_CHECKPOINT
            flows.append(NeededFlow(_describe(kind, top, regional), Flow(kind, top, regional)))
        operators = Endpoint(Tier.OPERATOR, GLOBAL_JURISDICTION)
        kind = Artifact.TELEMETRY
        flows.append(NeededFlow(_describe(kind, top, operators), Flow(kind, top, operators)))
        return tuple(flows)


def _describe(kind: Artifact, source: Endpoint, destination: Endpoint) -> str:
    return f"{wording.ARTIFACT_NOUNS[kind]} from {format_endpoint(source)} to {format_endpoint(destination)}"


def read_topology(path: Path) -> Topology:
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PolicyError(f"cannot read topology file {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise PolicyError(f"topology file {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict) or raw.get("format") != "jurisfed-topology/v1":
        raise PolicyError(f"topology file {path} must be a mapping with format: jurisfed-topology/v1")
    unknown = sorted(set(raw) - {"format", "global", "jurisdictions", "description"})
    if unknown:
        raise PolicyError(f"topology file {path}: unknown key(s) {', '.join(unknown)}")
    top = raw.get("global") or {}
    jurisdictions = raw.get("jurisdictions")
    if not isinstance(top, dict) or not isinstance(jurisdictions, dict) or not jurisdictions:
        raise PolicyError(
            f"topology file {path}: global must be a mapping and jurisdictions a non-empty mapping"
        )
    regional: dict[str, str | None] = {}
    for code, body in jurisdictions.items():
        if not isinstance(code, str) or not isinstance(body or {}, dict):
            raise PolicyError(f"topology file {path}: jurisdiction {code!r} must map to {{location: NAME}}")
        regional[code] = (body or {}).get("location")
    return Topology(global_location=top.get("location"), regional_locations=regional)


class FindingKind(enum.Enum):
    MISSING = "missing"
    DEAD = "dead"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    message: str
    rule_ids: tuple[str, ...] = ()


def analyse(policy: Policy, topology: Topology) -> list[Finding]:
    """Missing flows, dead rules and conflicting rules of `policy` in `topology`."""
    needed = [n for n in topology.needed_flows() if concerns(policy, n.flow)]
    findings = [_missing(policy, n) for n in needed]
    findings += _dead(policy, topology)
    findings += _conflicts(policy)
    return [f for f in findings if f is not None]


def _can_allow(rule: Rule, flow: Flow) -> bool:
    """Whether some facts would let `rule` allow `flow` (only hosting is known in advance)."""
    hosts = rule.conditions.hosted_in
    return rule.covers(flow) and (not hosts or flow.destination.location in hosts)


def _missing(policy: Policy, needed: NeededFlow) -> Finding | None:
    covering = [rule for rule in policy.rules_for(needed.flow.artifact) if rule.covers(needed.flow)]
    if any(_can_allow(rule, needed.flow) for rule in covering):
        return None
    if covering:
        where = needed.flow.destination.location or "an unstated location"
        ids = ", ".join(rule.id for rule in covering)
        why = f"rule(s) {ids} allow it only to a receiver hosted elsewhere, and it runs in {where}"
    else:
        why = "no rule covers it"
    return Finding(
        FindingKind.MISSING,
        f"the federation needs {needed.description}, but policy {policy.label} refuses it: {why}",
        tuple(rule.id for rule in covering),
    )


def _dead(policy: Policy, topology: Topology) -> list[Finding]:
    flows = [n.flow for n in topology.needed_flows()]
    findings: list[Finding] = []
    for index, rule in enumerate(policy.rules):
        matching = [flow for flow in flows if rule.covers(flow)]
        if not matching:
            findings.append(
                Finding(
                    FindingKind.DEAD,
                    f"rule {rule.id} can never apply in this federation: no flow the federation needs "
                    f"matches it ({wording.permission(policy, rule)})",
                    (rule.id,),
                )
            )
            continue
        if not any(_can_allow(rule, flow) for flow in matching):
            places = ", ".join(sorted({f.destination.location or "an unstated location" for f in matching}))
            findings.append(
                Finding(
                    FindingKind.DEAD,
                    f"rule {rule.id} can never allow anything here: it requires hosting in "
                    f"{', '.join(rule.conditions.hosted_in)}, and the receiver runs in {places}",
                    (rule.id,),
                )
            )
            continue
        shadow = next(
            (e for e in policy.rules[:index] if _contains(e, rule) and _at_most_as_strict(e, rule)), None
        )
        if shadow is not None:
            findings.append(
                Finding(
                    FindingKind.DEAD,
                    f"rule {rule.id} never decides anything: rule {shadow.id}, before it, covers every "
                    "flow it covers and asks no more of them",
                    (rule.id, shadow.id),
                )
            )
    return findings


def _conflicts(policy: Policy) -> list[Finding]:
    findings: list[Finding] = []
    for index, first in enumerate(policy.rules):
        for second in policy.rules[index + 1 :]:
            if not _overlap(first, second) or first.conditions == second.conditions:
                continue
            if _contains(first, second) and _at_most_as_strict(first, second):
                continue  # reported as dead: the second never decides
            looser = _looser_points(first, second) + _looser_points(second, first)
            findings.append(
                Finding(
                    FindingKind.CONFLICT,
                    f"rules {first.id} and {second.id} both cover {_overlap_text(first, second)} but ask "
                    f"different things, so the looser one decides: {'; '.join(looser)}",
                    (first.id, second.id),
                )
            )
    return findings


def _overlap(a: Rule, b: Rule) -> bool:
    """Whether some flow is covered by both rules and could meet both rules' hosting condition."""
    hosts_a, hosts_b = set(a.conditions.hosted_in), set(b.conditions.hosted_in)
    return (
        not (hosts_a and hosts_b and not hosts_a & hosts_b)
        and bool(set(a.artifacts) & set(b.artifacts))
        and bool(set(a.source.tiers) & set(b.source.tiers))
        and bool(a.source.jurisdictions & b.source.jurisdictions)
        and bool(set(a.destination.tiers) & set(b.destination.tiers))
        and bool(a.destination.jurisdictions & b.destination.jurisdictions)
    )


def _overlap_text(a: Rule, b: Rule) -> str:
    kinds = [k for k in a.artifacts if k in b.artifacts]
    sources = sorted(a.source.jurisdictions & b.source.jurisdictions)
    destinations = sorted(a.destination.jurisdictions & b.destination.jurisdictions)
    return f"{wording.artifacts(tuple(kinds))} from {'/'.join(sources)} to {'/'.join(destinations)}"


def _contains(outer: Rule, inner: Rule) -> bool:
    return (
        set(inner.artifacts) <= set(outer.artifacts)
        and set(inner.source.tiers) <= set(outer.source.tiers)
        and inner.source.jurisdictions <= outer.source.jurisdictions
        and set(inner.destination.tiers) <= set(outer.destination.tiers)
        and inner.destination.jurisdictions <= outer.destination.jurisdictions
    )


def _at_most_as_strict(a: Rule, b: Rule) -> bool:
    """Whether every flow meeting b's conditions also meets a's."""
    x, y = a.conditions, b.conditions
    dp_ok = x.differential_privacy is None or (
        y.differential_privacy is not None
        and x.differential_privacy.max_epsilon >= y.differential_privacy.max_epsilon
        and x.differential_privacy.max_delta >= y.differential_privacy.max_delta
        and x.differential_privacy.period_days <= y.differential_privacy.period_days
    )
    return (
        (
            x.min_cohort_silos is None
            or (y.min_cohort_silos is not None and x.min_cohort_silos <= y.min_cohort_silos)
        )
        and dp_ok
        and (not x.compression_required or y.compression_required)
        and set(x.layers_stay_local) <= set(y.layers_stay_local)
        and set(x.strip_metadata) <= set(y.strip_metadata)
        and (not x.hosted_in or (bool(y.hosted_in) and set(y.hosted_in) <= set(x.hosted_in)))
    )


def _looser_points(a: Rule, b: Rule) -> list[str]:
    """Where rule a asks less than rule b, as phrases."""
    x, y = a.conditions, b.conditions
    points: list[str] = []
    if y.min_cohort_silos is not None and (x.min_cohort_silos or 0) < y.min_cohort_silos:
        points.append(
            f"{a.id} needs {x.min_cohort_silos or 'no minimum of'} silos "
            f"where {b.id} needs {y.min_cohort_silos}"
        )
    points += _looser_privacy(a, b, x, y)
    if y.compression_required and not x.compression_required:
        points.append(f"{a.id} does not require compression")
    extra_layers = [g for g in y.layers_stay_local if g not in x.layers_stay_local]
    if extra_layers:
        points.append(f"{a.id} lets the layers {', '.join(extra_layers)} leave")
    extra_fields = [wording.METADATA_NOUNS[f] for f in y.strip_metadata if f not in x.strip_metadata]
    if extra_fields:
        points.append(f"{a.id} does not remove {wording.join(extra_fields)}")
    if y.hosted_in and (not x.hosted_in or not set(x.hosted_in) <= set(y.hosted_in)):
        extra = [h for h in x.hosted_in if h not in y.hosted_in]
        where = f"also in {', '.join(extra)}" if x.hosted_in else "anywhere"
        points.append(f"{a.id} allows a receiver hosted {where}")
    return points


def _looser_privacy(a: Rule, b: Rule, x: Conditions, y: Conditions) -> list[str]:
    if y.differential_privacy is None:
        return []
    if x.differential_privacy is None:
        return [f"{a.id} does not require differential privacy"]
    points = []
    if x.differential_privacy.max_epsilon > y.differential_privacy.max_epsilon:
        points.append(
            f"{a.id} allows ε up to {x.differential_privacy.max_epsilon:g} "
            f"where {b.id} allows {y.differential_privacy.max_epsilon:g}"
        )
    if x.differential_privacy.max_delta > y.differential_privacy.max_delta:
        points.append(f"{a.id} allows a larger δ than {b.id}")
    if x.differential_privacy.period_days < y.differential_privacy.period_days:
        points.append(f"{a.id} counts privacy spend over a shorter period than {b.id}")
    return points
