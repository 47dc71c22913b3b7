"""A server that serves one jurisdiction refuses peers of another before any handler runs.

A regional aggregator serves the silos of its own jurisdiction only. Its aggregator already
refuses a foreign silo when it registers or submits; this interceptor refuses the call earlier,
on every method, from the verified certificate alone: PERMISSION_DENIED
``jurisfed://US/silo/x belongs to jurisdiction US; this server serves only EU``. Tiers whose
nodes legitimately call across jurisdictions (the operators' consoles, by default) pass here
and are left to the method policy and their tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

import grpc

from jurisfed.auth.identity import Tier, check_jurisdiction, peer_identity
from jurisfed.errors import ConfigError, NotAllowed
from jurisfed.rpc.call_guard import AdmissionInterceptor


class JurisdictionInterceptor(AdmissionInterceptor):
    """Refuses every call whose peer certificate names another jurisdiction, unless its tier is exempt."""

    def __init__(self, jurisdiction: str, *, exempt: Collection[Tier] = (Tier.OPERATOR,)) -> None:
        try:
            check_jurisdiction(jurisdiction)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self._jurisdiction = jurisdiction
        self._exempt = frozenset(exempt)

    @contextlib.contextmanager
    def admit(self, context: grpc.ServicerContext) -> Iterator[None]:
        peer = peer_identity(context)
        if peer.tier not in self._exempt and peer.jurisdiction != self._jurisdiction:
            raise NotAllowed(
                f"{peer} belongs to jurisdiction {peer.jurisdiction}; "
                f"this server serves only {self._jurisdiction}"
            )
        yield
