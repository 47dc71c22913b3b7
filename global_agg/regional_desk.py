"""The global aggregator's regional side: its registered regionals, the long poll, base
downloads, declines and aggregates.

A RegionalDesk holds what the regionals and the round loop share in memory, under one
condition: the registered regional of each member jurisdiction, the open round and its
contract, the jurisdictions that declined it, the refusals so far, and whether the federation
finished or the server is stopping. Through it a regional registers (only for a jurisdiction
whose residency policy the global holds), long-polls for the rounds of its cohort, downloads the
round's base, declines a round its policy refuses, and sends its aggregate (aggregates.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from global_agg.aggregates import AggregateDesk
from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import Board, OpenRound, wait_for_announcement
from jurisfed.aggregation.outliers import OutlierHandling
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.roles import require_tier
from jurisfed.errors import JurisfedError, NotAllowed, WrongState
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Artifact, Endpoint, Flow
from jurisfed.round_contract import RoundContract
from jurisfed.rounds import AggregateHeader, Refusal, RoundAnnouncement
from jurisfed.store.tier_state import TierState
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2

log = logging.getLogger("jurisfed.global")


@dataclass
class Live:
    """The open round and the contract it runs under."""

    opened: OpenRound
    contract: RoundContract


class RegionalDesk:
    def __init__(
        self,
        identity: Identity,
        spec: ModelSpec,
        state: TierState,
        endpoint: Endpoint,
        members: Mapping[str, PolicyGuard],
        aggregates: AggregateDesk,
        outliers: OutlierHandling,
        audit: AuditSink,
    ) -> None:
        """`members` holds each member jurisdiction's policy; `aggregates` checks and keeps their
        aggregates; `outliers` names the jurisdictions quarantined, whose aggregates are refused."""
        self.identity = identity
        self._spec = spec
        self._state = state
        self._endpoint = endpoint
        self._members = members
        self._aggregates = aggregates
        self._audit = audit
        self._outliers = outliers
        # Guarded by `changed`, which every change to them notifies:
        self.changed = threading.Condition()
        self.regionals: dict[str, Identity] = {}
        for silo in state.registry.silos():  # regionals are registered under their identity URI
            known = Identity.parse(silo.silo_id)
            if known.tier is Tier.REGIONAL:
                self.regionals[known.jurisdiction] = known
        self.live: Live | None = None
        self.finished = False
        self.stopping = False
        self.refusals: list[Refusal] = []
        self.declined: set[str] = set()  # jurisdictions that declined the open round

    def register_regional(self, peer: Identity, code_version: str = "") -> str:
        require_tier(peer, Tier.REGIONAL, "register as a regional aggregator")
        if peer.jurisdiction not in self._members:
            raise NotAllowed(
                f"no residency policy of jurisdiction {peer.jurisdiction} is installed at the global "
                f"aggregator (member policies: {', '.join(sorted(self._members)) or 'none'})"
            )
        with self.changed:
            known = self.regionals.get(peer.jurisdiction)
            if known is not None and known.node != peer.node:
                log.warning("regional replaced", extra={"jurisdiction": peer.jurisdiction, "old": known.node})
                self._state.registry.forget_silo(str(known))
            self._state.registry.register_silo(str(peer), 0, "", code_version[:64])
            self.regionals[peer.jurisdiction] = peer
            self.changed.notify_all()
        log.info("regional registered", extra={"jurisdiction": peer.jurisdiction, "node": peer.node})
        return peer.jurisdiction

    def wait_for_jurisdictions(self, expected: int, timeout_s: float, stop: threading.Event) -> None:
        """Block until `expected` jurisdictions registered, or `timeout_s` passed, or `stop` was set."""
        give_up = time.monotonic() + timeout_s
        with self.changed:
            while len(self.regionals) < expected and not stop.is_set():
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "starting without every expected jurisdiction",
                        extra={"registered": sorted(self.regionals), "expected": expected},
                    )
                    return
                self.changed.wait(min(remaining, 0.5))

    def wait_for_round(self, peer: Identity, after_round: int, max_wait_s: float) -> RoundAnnouncement:
        self._check_registered(peer)
        return wait_for_announcement(
            self.changed, lambda: self._board(peer.jurisdiction), after_round, max_wait_s
        )

    def _board(self, jurisdiction: str) -> Board:
        live = self.live
        invited = live is not None and jurisdiction in live.contract.cohort.jurisdictions
        return Board(live.opened if live is not None and invited else None, self.finished, self.stopping)

    def base_model(self, peer: Identity, round_number: int) -> tuple[ModelSpec, Weights]:
        self._check_registered(peer)
        live = self._open_round(round_number)
        if peer.jurisdiction not in live.contract.cohort.jurisdictions:
            raise NotAllowed(f"{peer.jurisdiction} is not in the cohort of round {round_number}")
        flow = Flow(Artifact.MODEL_CHECKPOINT, self._endpoint, self._aggregates.regional_endpoint(peer))
        self._aggregates.require_both(peer, flow, round_number)
        return self._spec, live.opened.base

    def decline_round(
        self, peer: Identity, round_number: int, rule_id: str, reason: str, policy_sha256: str
    ) -> None:
        """A regional's policy refused this round: go on without that jurisdiction at once."""
        self._check_registered(peer)
        self._open_round(round_number)
        refusal = Refusal(round_number, peer.jurisdiction, rule_id[:200], reason[:900])
        self._audit.record(
            AuditEvent(
                kind=EventKind.CONTRACT_DECISION,
                actor=self.identity,
                jurisdiction=peer.jurisdiction,
                round_number=round_number,
                subject=peer,
                policy_hash=policy_sha256 or None,
                decision=Decision.DENY,
                rule=refusal.rule_id or "unnamed",
                details={Detail.REASON: refusal.reason or "no reason given"},
            )
        )
        self._state.record_refusal(
            round_number,
            peer.jurisdiction,
            "declined",
            f"rule {refusal.rule_id or 'unnamed'}: {refusal.reason}",
        )
        with self.changed:
            self.declined.add(peer.jurisdiction)
            self.refusals.append(refusal)
            self.changed.notify_all()
        log.warning(
            "round declined by a regional's policy",
            extra={"round": round_number, "jurisdiction": peer.jurisdiction, "rule": rule_id},
        )

    def submit_aggregate(
        self,
        peer: Identity,
        header: AggregateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
    ) -> Receipt:
        """Take a jurisdiction's aggregate to the open round (aggregates.py); refusals are recorded."""
        try:
            self._check_registered(peer)
            self._outliers.refuse_if_quarantined(peer.jurisdiction)
            live = self._open_round(header.round)
        except JurisfedError as error:
            with self.changed:
                open_round = self.live.opened.number if self.live is not None else None
            self._aggregates.refused(peer, header.round, meter, error, open_round=open_round)
            raise
        receipt = self._aggregates.take(
            peer, header, chunks, meter, certificate_pem, live.opened, live.contract.cohort.jurisdictions
        )
        with self.changed:
            self.changed.notify_all()
        return receipt

    def _open_round(self, round_number: int) -> Live:
        with self.changed:
            live = self.live
        if live is None or live.opened.number != round_number or not live.opened.intake.is_open:
            open_now = live.opened.number if live is not None and live.opened.intake.is_open else "none"
            raise WrongState(f"round {round_number} is not open; the open round is {open_now}")
        return live

    def regional_identity(self, jurisdiction: str) -> Identity:
        with self.changed:
            known = self.regionals.get(jurisdiction)
        return known if known is not None else Identity(jurisdiction, Tier.REGIONAL, "regional")

    def _check_registered(self, peer: Identity) -> None:
        require_tier(peer, Tier.REGIONAL, "take part in global rounds")
        with self.changed:
            known = self.regionals.get(peer.jurisdiction)
        if known is None or known.node != peer.node:
            raise WrongState(f"regional {peer} must register before anything else")
