"""What a regional may send across its border, decided by its own residency policy.

Twice per round: before running it (the round contract against the policy, with the cohort
the regional could gather, so that a round the policy would refuse anyway is declined at
once and the global goes on without this jurisdiction), and before forwarding (the real
aggregate, with the cohort that actually contributed). The regional applies what it controls
itself: it withholds the layers the policy keeps local and strips every identifying field —
an aggregate header carries only the round, cohort size and example total.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from jurisfed.auth.identity import GLOBAL_JURISDICTION
from jurisfed.compression.codec import Codec, CodecKind
from jurisfed.policy.engine import requirements
from jurisfed.policy.flows import aggregate_flow
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Decision, Endpoint, PrivacySpend, Tier
from jurisfed.tensors import ModelSpec


@dataclass(frozen=True)
class Export:
    """How this round's aggregate leaves: which tensors stay home, and how it is encoded."""

    decision: Decision
    withheld: tuple[str, ...]
    codec: Codec  # the round contract's regional_to_global codec

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def plan_export(
    guard: PolicyGuard,
    spec: ModelSpec,
    *,
    round_number: int,
    global_location: str,
    codec: Codec,
    cohort_silos: int,
    privacy: PrivacySpend | None = None,
) -> Export:
    """The policy's decision on sending this round's aggregate to the global aggregator;
    `privacy`: the DP spend with this round's release (None: the round adds no noise)."""
    source = Endpoint(Tier.REGIONAL, guard.policy.jurisdiction, guard.location)
    destination = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, global_location or None)
    needs = requirements(guard.policy, Artifact.AGGREGATE, source, destination)
    withheld = tuple(t.name for t in spec.tensors if needs.is_local_layer(t.name))
    flow = aggregate_flow(
        source,
        destination,
        (t.name for t in spec.tensors),
        withheld=withheld,
        cohort_silos=cohort_silos,
        compressed=codec.kind is not CodecKind.RAW,
    )
    flow = replace(flow, privacy=privacy)
    return Export(guard.decide(flow, round_number=round_number), withheld, codec)
