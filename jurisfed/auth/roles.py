"""Which tier of peer may call what. Finer roles from tokens come with the security issue."""

from __future__ import annotations

from jurisfed.auth.identity import Identity, Tier
from jurisfed.errors import NotAllowed


def require_tier(peer: Identity, tier: Tier, action: str) -> None:
    """Raise NotAllowed unless the authenticated `peer` belongs to `tier`."""
    if peer.tier is not tier:
        raise NotAllowed(f"{peer} may not {action}; only {tier.value}s may")
