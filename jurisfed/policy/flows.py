"""Flows written down: ``EU/regional@eu-frankfurt`` endpoints and flow records in YAML files.

The same record shape describes a flow in a `simulate` file and can describe one in a
recording of a round, so that a recorded round can be replayed against a new policy:

    - name: EU aggregate of round 12          # optional, for people
      artifact: aggregate
      from: EU/regional
      to: GLOBAL/global@ch-zurich
      cohort_silos: 6
      privacy: {epsilon: 2.1, delta: 1.0e-6, period_days: 90}   # omit: no DP applied
      compressed: true
      layers: [hidden_1/kernel, hidden_1/bias]
      metadata: []                              # identifying fields it still carries
      data_classes: []
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jurisfed.policy.errors import PolicyError
from jurisfed.policy.model import Artifact, Endpoint, Flow, MetadataField, PrivacySpend, Tier

__all__ = ["NamedFlow", "aggregate_flow", "flow_from_record", "flow_to_record", "parse_endpoint"]

_ENDPOINT = re.compile(
    r"(?P<jurisdiction>[A-Z0-9]{2,16})/(?P<tier>[a-z]+)(?:@(?P<location>[a-z][a-z0-9-]{0,62}))?"
)
_FIELDS = {
    "name",
    "artifact",
    "from",
    "to",
    "cohort_silos",
    "privacy",
    "compressed",
    "layers",
    "metadata",
    "data_classes",
}


@dataclass(frozen=True)
class NamedFlow:
    name: str
    flow: Flow


def aggregate_flow(
    source: Endpoint,
    destination: Endpoint,
    tensors: Iterable[str],
    *,
    withheld: Iterable[str],
    cohort_silos: int,
    compressed: bool,
) -> Flow:
    """A jurisdiction's aggregate as it crosses to the global: the flow both ends decide.

    It carries every tensor of the model but the `withheld` ones, and an aggregate header has
    no field that could name a silo or a host, so no identifying metadata. Differential privacy
    at the regional is not applied yet (issue 7), so `privacy` is unknown: a rule requiring it
    refuses the flow.
    """
    return Flow(
        artifact=Artifact.AGGREGATE,
        source=source,
        destination=destination,
        cohort_silos=cohort_silos,
        privacy=None,
        compressed=compressed,
        layers=frozenset(tensors) - frozenset(withheld),
        metadata_fields=frozenset(),
    )


def parse_endpoint(text: str) -> Endpoint:
    """'EU/regional' or 'GLOBAL/global@ch-zurich' -> Endpoint; PolicyError for anything else."""
    match = _ENDPOINT.fullmatch(text.strip())
    tiers = ", ".join(t.value for t in Tier)
    if match is None:
        raise PolicyError(
            f"endpoint {text!r} must read JURISDICTION/tier or JURISDICTION/tier@location, "
            f"e.g. EU/regional or GLOBAL/global@ch-zurich (tiers: {tiers})"
        )
    try:
        tier = Tier(match["tier"])
    except ValueError:
        raise PolicyError(f"endpoint {text!r}: unknown tier {match['tier']!r} (tiers: {tiers})") from None
    return Endpoint(tier, match["jurisdiction"], match["location"])


def format_endpoint(endpoint: Endpoint) -> str:
    at = f"@{endpoint.location}" if endpoint.location else ""
    return f"{endpoint.jurisdiction}/{endpoint.tier.value}{at}"


def flow_from_record(record: Mapping[str, Any], where: str) -> NamedFlow:
    """A flow from its record (see the module docstring); PolicyError naming `where` if malformed."""
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise PolicyError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    for key in ("artifact", "from", "to"):
        if key not in record:
            raise PolicyError(f"{where}: {key} is required")
    try:
        artifact = Artifact(record["artifact"])
    except ValueError:
        known = ", ".join(a.value for a in Artifact)
        raise PolicyError(f"{where}: artifact {record['artifact']!r} is not one of {known}") from None
    privacy = record.get("privacy")
    spend = None
    if privacy is not None:
        if not isinstance(privacy, Mapping) or set(privacy) != {"epsilon", "delta", "period_days"}:
            raise PolicyError(f"{where}: privacy must give epsilon, delta and period_days")
        spend = PrivacySpend(
            _number(privacy["epsilon"], f"{where}.privacy.epsilon"),
            _number(privacy["delta"], f"{where}.privacy.delta"),
            _whole(privacy["period_days"], f"{where}.privacy.period_days"),
        )
    try:
        metadata = _optional_set(record, "metadata", where)
        fields = None if metadata is None else frozenset(MetadataField(m) for m in metadata)
    except ValueError as error:
        known = ", ".join(m.value for m in MetadataField)
        raise PolicyError(f"{where}: {error}; metadata fields are {known}") from None
    compressed = record.get("compressed")
    if compressed is not None and not isinstance(compressed, bool):
        raise PolicyError(f"{where}: compressed must be true or false")
    cohort = record.get("cohort_silos")
    flow = Flow(
        artifact=artifact,
        source=parse_endpoint(str(record["from"])),
        destination=parse_endpoint(str(record["to"])),
        cohort_silos=None if cohort is None else _whole(cohort, f"{where}.cohort_silos"),
        privacy=spend,
        compressed=compressed,
        layers=_optional_set(record, "layers", where),
        metadata_fields=fields,
        data_classes=_optional_set(record, "data_classes", where) or frozenset(),
    )
    name = str(
        record.get("name")
        or f"{artifact.value} {format_endpoint(flow.source)} -> {format_endpoint(flow.destination)}"
    )
    return NamedFlow(name, flow)


def flow_to_record(flow: Flow, name: str | None = None) -> dict[str, object]:
    """The record `flow_from_record` reads back into the same flow."""
    record: dict[str, object] = {}
    if name:
        record["name"] = name
    record.update(
        artifact=flow.artifact.value,
        **{"from": format_endpoint(flow.source), "to": format_endpoint(flow.destination)},
    )
    if flow.cohort_silos is not None:
        record["cohort_silos"] = flow.cohort_silos
    if flow.privacy is not None:
        record["privacy"] = {
            "epsilon": flow.privacy.epsilon,
            "delta": flow.privacy.delta,
            "period_days": flow.privacy.period_days,
        }
    if flow.compressed is not None:
        record["compressed"] = flow.compressed
    if flow.layers is not None:
        record["layers"] = sorted(flow.layers)
    if flow.metadata_fields is not None:
        record["metadata"] = sorted(f.value for f in flow.metadata_fields)
    if flow.data_classes:
        record["data_classes"] = sorted(flow.data_classes)
    return record


def _optional_set(record: Mapping[str, Any], key: str, where: str) -> frozenset[str] | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{where}: {key} must be a list of names")
    return frozenset(value)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where} must be a number, not {value!r}")
    return float(value)


def _whole(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{where} must be a whole number, not {value!r}")
    return value
