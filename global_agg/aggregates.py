"""What crosses into the global aggregator: each jurisdiction's aggregate, checked and kept.

An aggregate must come from a jurisdiction of the round's cohort, attest the policy the global
holds for that jurisdiction, use the round's encoding, be allowed by the exporting
jurisdiction's policy and by the global's own, and carry a signature that verifies over exactly
the chunks streamed. Once staged and valid it is stored as a blob and recorded in the state file
before it is folded into the round (intake.py), so a restarted global counts it exactly once.
Every acceptance and refusal goes to the audit log; refusals also to the round's record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from jurisfed.aggregation.intake import Receipt
from jurisfed.aggregation.open_round import OpenRound
from jurisfed.audit.events import AuditEvent, Decision, Detail, EventKind, refusal_reason
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier
from jurisfed.auth.signatures import StreamSignature
from jurisfed.compression.codec import CodecKind
from jurisfed.errors import JurisfedError, NotAllowed, WrongState
from jurisfed.participation import record_refusal
from jurisfed.policy.flows import aggregate_flow
from jurisfed.policy.guard import PolicyGuard
from jurisfed.policy.model import Endpoint, Flow
from jurisfed.round_contract import RoundContract
from jurisfed.round_plan import applies_dp
from jurisfed.rounds import AggregateHeader
from jurisfed.store.blobs import BlobStore
from jurisfed.store.tier_state import TierState
from jurisfed.telemetry import Direction, Hop, Instrumentation
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import tensors_pb2

log = logging.getLogger("jurisfed.global")


class AggregateDesk:
    def __init__(
        self,
        identity: Identity,
        spec: ModelSpec,
        state: TierState,
        blobs: BlobStore,
        guard: PolicyGuard,
        members: Mapping[str, PolicyGuard],
        audit: AuditSink,
        instruments: Instrumentation,
    ) -> None:
        self._identity = identity
        self._spec = spec
        self._state = state
        self._blobs = blobs
        self._guard = guard
        self._members = members
        self._audit = audit
        self._instruments = instruments
        self._endpoint = Endpoint(Tier.GLOBAL, GLOBAL_JURISDICTION, guard.location)

    def regional_endpoint(self, peer: Identity) -> Endpoint:
        return Endpoint(Tier.REGIONAL, peer.jurisdiction, self._members[peer.jurisdiction].location)

    def require_both(self, peer: Identity, flow: Flow, round_number: int) -> None:
        """The exporting jurisdiction's policy and the global's own must both allow `flow`."""
        self._members[peer.jurisdiction].require(flow, round_number=round_number, subject=peer)
        self._guard.require(flow, round_number=round_number, subject=peer)

    def take(
        self,
        peer: Identity,
        header: AggregateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        certificate_pem: bytes,
        opened: OpenRound,
        cohort: tuple[str, ...],
    ) -> Receipt:
        """Take a registered regional's aggregate to the open round `opened`; its signature is
        verified as it streams and recorded."""
        signature = StreamSignature(header.round, peer, certificate_pem, header.content_signature)
        try:
            receipt = self._take(peer, header, signature.wrap(chunks), meter, opened, cohort)
        except JurisfedError as error:
            self.refused(peer, header.round, meter, error, open_round=opened.number)
            raise
        if not receipt.duplicate:
            digests, evidence = signature.evidence()
            self._record(
                peer,
                round_number=header.round,
                decision=Decision.ALLOW,
                digests=digests,
                details={
                    Detail.COHORT_SIZE: header.cohort_size,
                    Detail.EXAMPLE_COUNT: header.example_total,
                    Detail.BYTES: meter.total_bytes,
                    **evidence,
                    **(
                        {Detail.DP_EPSILON: header.privacy.epsilon, Detail.DP_DELTA: header.privacy.delta}
                        if header.privacy is not None
                        else {}
                    ),
                },
            )
        log.info("aggregate received", extra={"round": header.round, "jurisdiction": peer.jurisdiction})
        return receipt

    def refused(
        self, peer: Identity, round_number: int, meter: Meter, error: JurisfedError, *, open_round: int | None
    ) -> None:
        """Audit a refused aggregate, and for a registered regional record it with the round too
        (`open_round`: the round open when it was refused, if any)."""
        self._record(
            peer,
            round_number=round_number,
            decision=Decision.DENY,
            details={Detail.REASON: refusal_reason(error), Detail.BYTES: meter.total_bytes},
        )
        if self._state.registry.silo(str(peer)) is not None:  # regionals are registered by identity
            record_refusal(self._state, peer.jurisdiction, round_number, error, open_round=open_round)

    def _take(
        self,
        peer: Identity,
        header: AggregateHeader,
        chunks: Iterable[tensors_pb2.TensorChunk],
        meter: Meter,
        opened: OpenRound,
        cohort: tuple[str, ...],
    ) -> Receipt:
        if peer.jurisdiction not in cohort:
            raise NotAllowed(f"{peer.jurisdiction} is not in the cohort of round {header.round}")
        self._check_attestation(peer, header)
        codec = opened.intake.codec  # the contract's regional_to_global codec
        if header.compression != codec.kind.value:
            raise WrongState(
                f"round {header.round} asks for {codec.kind.value} aggregates, not {header.compression}"
            )
        self._check_privacy(header, opened)
        withheld = frozenset(header.withheld_tensors)
        flow = aggregate_flow(
            self.regional_endpoint(peer),
            self._endpoint,
            (t.name for t in self._spec.tensors),
            withheld=withheld,
            cohort_silos=header.cohort_size,
            compressed=codec.kind is not CodecKind.RAW,
        )
        self.require_both(peer, replace(flow, privacy=header.privacy), header.round)
        carried = self._spec.without(withheld)

        def keep(update: Weights) -> bool:
            """Store the aggregate and record it before it is folded."""
            content = self._blobs.put_weights(carried, update)
            recorded = self._state.record_contribution(
                header.round,
                peer.jurisdiction,
                header.idempotency_key,
                content,
                header.example_total,
                cohort_size=header.cohort_size,
                bytes_received=meter.total_bytes,
                float32_bytes=carried.float32_bytes,
                withheld=tuple(sorted(withheld)),
            )
            return recorded.new

        try:
            return opened.intake.receive(
                peer.jurisdiction,
                header.idempotency_key,
                float(header.example_total),
                chunks,
                withheld=withheld,
                keep=keep,
            )
        finally:
            opened.intake.count_bytes(meter.total_bytes)
            self._instruments.metrics.bytes_moved(Hop.REGIONAL_GLOBAL, Direction.RECEIVED, meter.total_bytes)

    @staticmethod
    def _check_privacy(header: AggregateHeader, opened: OpenRound) -> None:
        """A round whose contract adds noise at the regionals takes only aggregates that declare it."""
        contract = RoundContract.from_canonical_json(opened.contract)
        if header.privacy is None and applies_dp(contract.aggregation.silos_rule()):
            raise WrongState(
                f"round {header.round}'s contract adds differential-privacy noise at the regionals "
                f"({contract.aggregation.silos}), but this aggregate declares none"
            )

    def _check_attestation(self, peer: Identity, header: AggregateHeader) -> None:
        installed = self._members[peer.jurisdiction].policy
        if header.policy_sha256 != installed.sha256:
            raise WrongState(
                f"the {peer.jurisdiction} regional attests enforcing policy "
                f"{header.policy_sha256 or '(none)'}, "
                f"but the global holds {installed.label} {installed.sha256}: both sides must run the same "
                "signed version"
            )

    def _record(self, peer: Identity, **fields: Any) -> None:
        self._audit.record(
            AuditEvent(
                kind=EventKind.AGGREGATE_RECEIVED,
                actor=self._identity,
                jurisdiction=peer.jurisdiction,
                subject=peer,
                **fields,
            )
        )
