"""What a residency policy says, and what a flow of model information is, as frozen values.

A `Policy` is what a policy file means once loaded and checked (`jurisfed.policy.loader`);
a `Flow` is one movement of an artifact between two nodes, with the facts the policy's
conditions need; the engine (`jurisfed.policy.engine`) turns the two into a `Decision`.
Nothing here reads files or knows YAML.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass, field

from jurisfed.auth.identity import Identity, Tier

__all__ = [
    "DEFAULT_DENY",
    "GLOBAL_JURISDICTION",
    "RAW_DATA_NEVER_MOVES",
    "Approval",
    "Artifact",
    "Conditions",
    "Decision",
    "Endpoint",
    "EndpointScope",
    "Flow",
    "JurisdictionGroup",
    "Location",
    "MetadataField",
    "Owner",
    "Policy",
    "PrivacyLimit",
    "PrivacySpend",
    "RestrictedData",
    "Retention",
    "Rule",
    "Tier",
]

# Decisions no rule of the file made carry one of these ids; policy files may not use them.
DEFAULT_DENY = "default-deny"
RAW_DATA_NEVER_MOVES = "raw-data-never-moves"
RESERVED_IDS = frozenset({DEFAULT_DENY, RAW_DATA_NEVER_MOVES})

# The jurisdiction code of the global aggregator's identity (jurisfed://GLOBAL/global/...).
GLOBAL_JURISDICTION = "GLOBAL"


class Artifact(enum.Enum):
    """What can flow between nodes. Raw data is listed so that it can be named, never allowed."""

    RAW_DATA = "raw_data"
    MODEL_UPDATE = "model_update"
    AGGREGATE = "aggregate"
    MODEL_CHECKPOINT = "model_checkpoint"
    PERSONALIZED_MODEL = "personalized_model"
    TELEMETRY = "telemetry"
    AUDIT_EVIDENCE = "audit_evidence"


class MetadataField(enum.Enum):
    """Identifying details a rule can require to be removed before an artifact crosses."""

    SILO_IDS = "silo_ids"
    HOST_NAMES = "host_names"
    IP_ADDRESSES = "ip_addresses"
    PER_SILO_EXAMPLE_COUNTS = "per_silo_example_counts"
    PER_SILO_METRICS = "per_silo_metrics"


@dataclass(frozen=True)
class Owner:
    name: str
    role: str = ""
    contact: str = ""


@dataclass(frozen=True)
class JurisdictionGroup:
    """A named set of jurisdiction codes, e.g. ``eu-eea``: EU, IS, LI, NO."""

    name: str
    description: str
    jurisdictions: tuple[str, ...]


@dataclass(frozen=True)
class Location:
    """A named hosting location (a data centre or cloud region), never a host name."""

    name: str
    place: str
    jurisdiction: str
    description: str = ""


@dataclass(frozen=True)
class RestrictedData:
    """A class of data from which nothing, in any form, may leave the policy's jurisdiction."""

    id: str
    data_class: str
    description: str
    legal_basis: str


@dataclass(frozen=True)
class EndpointScope:
    """One side of a rule: which tiers, in which jurisdictions (groups expanded to codes)."""

    tiers: tuple[Tier, ...]
    written: tuple[str, ...]  # jurisdiction codes and group names, as the file spells them
    jurisdictions: frozenset[str]

    def covers(self, endpoint: Endpoint) -> bool:
        return endpoint.tier in self.tiers and endpoint.jurisdiction in self.jurisdictions


@dataclass(frozen=True)
class PrivacyLimit:
    """Differential privacy is required, spending at most this much in any `period_days`."""

    max_epsilon: float
    max_delta: float
    period_days: int


@dataclass(frozen=True)
class Conditions:
    """What must hold of a flow for its rule to allow it; an unset condition asks nothing."""

    min_cohort_silos: int | None = None
    differential_privacy: PrivacyLimit | None = None
    compression_required: bool = False
    layers_stay_local: tuple[str, ...] = ()
    strip_metadata: tuple[MetadataField, ...] = ()
    hosted_in: tuple[str, ...] = ()
    _local_layer: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    # The names of the conditions set, in the order they are checked (and read in a review).
    checks: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = (
            ("hosted_in", bool(self.hosted_in)),
            ("min_cohort_silos", self.min_cohort_silos is not None),
            ("differential_privacy", self.differential_privacy is not None),
            ("compression_required", self.compression_required),
            ("layers_stay_local", bool(self.layers_stay_local)),
            ("strip_metadata", bool(self.strip_metadata)),
        )
        object.__setattr__(self, "checks", tuple(name for name, present in checks if present))
        if self.layers_stay_local:
            pattern = "|".join(fnmatch.translate(glob) for glob in self.layers_stay_local)
            object.__setattr__(self, "_local_layer", re.compile(pattern))

    @property
    def empty(self) -> bool:
        return self == Conditions()

    def local_layers(self, names: frozenset[str]) -> list[str]:
        """The names among `names` matching a layer that must stay local, sorted."""
        if self._local_layer is None:
            return []
        return sorted(name for name in names if self._local_layer.match(name))


@dataclass(frozen=True)
class Rule:
    """Allows `artifacts` to flow from `source` to `destination` when `conditions` hold."""

    id: str
    description: str
    legal_basis: str
    artifacts: tuple[Artifact, ...]
    source: EndpointScope
    destination: EndpointScope
    conditions: Conditions = Conditions()

    def covers(self, flow: Flow) -> bool:
        """Whether this rule speaks about `flow` at all (whatever its conditions say)."""
        return (
            flow.artifact in self.artifacts
            and self.source.covers(flow.source)
            and self.destination.covers(flow.destination)
        )


@dataclass(frozen=True)
class Retention:
    """How long a tier keeps an artifact it stores."""

    tier: Tier
    artifact: Artifact
    days: int
    description: str = ""


@dataclass(frozen=True)
class Approval:
    """Who approved a version of the policy, when, and their Ed25519 signature over it."""

    approver: str
    approved_at: str  # ISO 8601 UTC, e.g. 2026-11-20T09:30:00Z
    key_id: str
    public_key: str  # base64 of the 32 raw public key bytes
    signature: str  # base64 of the 64 signature bytes


@dataclass(frozen=True)
class Policy:
    """One jurisdiction's residency policy. Default deny: only what a rule allows may flow."""

    id: str
    version: int
    title: str
    jurisdiction: str
    effective_from: str  # YYYY-MM-DD
    owners: tuple[Owner, ...]
    rules: tuple[Rule, ...]
    description: str = ""
    hosting_location: str | None = None
    groups: tuple[JurisdictionGroup, ...] = ()
    locations: tuple[Location, ...] = ()
    restricted_data: tuple[RestrictedData, ...] = ()
    retention: tuple[Retention, ...] = ()
    approvals: tuple[Approval, ...] = ()
    sha256: str = ""  # "sha256:<hex>" of the canonical form, approvals excluded
    canonical: bytes = field(default=b"", repr=False, compare=False)  # what is hashed and signed
    _by_artifact: dict[Artifact, tuple[Rule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _known_jurisdictions: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _restricted: dict[str, RestrictedData] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _allowed: dict[str, Decision] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_artifact = {
            artifact: tuple(rule for rule in self.rules if artifact in rule.artifacts)
            for artifact in Artifact
        }
        known = {self.jurisdiction, GLOBAL_JURISDICTION}
        for group in self.groups:
            known.update(group.jurisdictions)
        for location in self.locations:
            known.add(location.jurisdiction)
        for rule in self.rules:
            known.update(rule.source.jurisdictions, rule.destination.jurisdictions)
        object.__setattr__(self, "_by_artifact", by_artifact)
        object.__setattr__(self, "_known_jurisdictions", frozenset(known))
        object.__setattr__(self, "_restricted", {r.data_class: r for r in self.restricted_data})
        # Decisions are values: the one allowing a flow by a rule is the same for every flow.
        allowed = {
            rule.id: Decision(True, rule.id, rule.description, self.id, self.version, self.sha256)
            for rule in self.rules
        }
        object.__setattr__(self, "_allowed", allowed)

    def allowed_by(self, rule: Rule) -> Decision:
        """The decision allowing a flow by `rule`."""
        return self._allowed[rule.id]

    def rules_for(self, artifact: Artifact) -> tuple[Rule, ...]:
        """The rules naming `artifact`, in file order."""
        return self._by_artifact.get(artifact, ())

    def knows(self, jurisdiction: str) -> bool:
        """Whether this policy names `jurisdiction` anywhere (its own, a group, a rule, a location)."""
        return jurisdiction in self._known_jurisdictions

    def restriction(self, data_class: str) -> RestrictedData | None:
        return self._restricted.get(data_class)

    def rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def group(self, name: str) -> JurisdictionGroup | None:
        return next((group for group in self.groups if group.name == name), None)

    def location(self, name: str) -> Location | None:
        return next((location for location in self.locations if location.name == name), None)

    def retention_days(self, tier: Tier, artifact: Artifact) -> int | None:
        """How long `tier` may keep `artifact`; None when the policy sets no period."""
        return next((r.days for r in self.retention if r.tier is tier and r.artifact is artifact), None)

    @property
    def label(self) -> str:
        """E.g. 'eu-residency v3 (EU)', for messages."""
        return f"{self.id} v{self.version} ({self.jurisdiction})"


@dataclass(frozen=True)
class Endpoint:
    """One end of a flow: a node's tier and jurisdiction and, where known, its hosting location."""

    tier: Tier
    jurisdiction: str
    location: str | None = None

    @classmethod
    def of(cls, identity: Identity, location: str | None = None) -> Endpoint:
        """The endpoint of an authenticated node; its jurisdiction comes from its certificate."""
        return cls(identity.tier, identity.jurisdiction, location)

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.jurisdiction} {self.tier.value}{where}"


@dataclass(frozen=True)
class PrivacySpend:
    """Differential privacy spent, by the sender's accountant, over the trailing `period_days`
    up to and including this release."""

    epsilon: float
    delta: float
    period_days: int


@dataclass(frozen=True)
class Flow:
    """One artifact moving from `source` to `destination`, with the facts conditions read.

    A fact left as None is unknown, and a condition that needs it refuses the flow: `privacy`
    None means no differential privacy was applied, `layers` None means the sender did not say
    which tensors it carries. `data_classes` are the classes of data the artifact derives from.
    """

    artifact: Artifact
    source: Endpoint
    destination: Endpoint
    cohort_silos: int | None = None
    privacy: PrivacySpend | None = None
    compressed: bool | None = None
    layers: frozenset[str] | None = None
    metadata_fields: frozenset[MetadataField] | None = None
    data_classes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    """Whether a flow may happen, which rule decided, and why, in a sentence for the audit log.

    `rule_id` is the id of the rule that allowed or refused the flow, or `default-deny` when
    no rule allows it, or `raw-data-never-moves`. `condition` names the condition that failed.
    """

    allowed: bool
    rule_id: str
    reason: str
    policy_id: str
    policy_version: int
    policy_sha256: str
    condition: str | None = None
