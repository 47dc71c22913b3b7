"""The regional's link to the global aggregator: it dials out, follows the global's rounds,
runs each one locally and forwards the compressed aggregate delta — only what its residency
policy allows (see regional/export.py), and tells the global at once when the policy refuses.

Before acting on a round it verifies the round's contract: signed by the global's contract key
(the key pinned in its configuration, or else the one the global presents when the regional
registers over mutual TLS), for this round and this base model. A contract that does not
verify is refused like a contract the policy refuses: declined, with the reason, and audited.
A round resumed after a restart is taken over when the global still runs it, else abandoned.

When the global's round plan ends it answers that the federation finished until an operator
starts the next plan: the regional stays, idle, and asks again (jurisfed/between_plans.py), so it
runs the next plan's rounds (numbered on from the last) without a restart; only a regional
configured with `exit_when_finished` stops following the global and tells its silos the
federation finished.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jurisfed import __version__
from jurisfed.audit.keys import key_id, parse_public_keys
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.between_plans import BetweenPlans
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.errors import ConfigError, InvalidInput, Unauthenticated
from jurisfed.policy.model import Decision
from jurisfed.round_contract import RoundContract, verify_contract
from jurisfed.rounds import AggregateHeader, RoundAnnouncement, RoundState
from jurisfed.rpc.channel import DEFAULT_DEADLINE_S
from jurisfed.rpc.retry import Link, with_retry
from jurisfed.telemetry import Attribute, SpanName, trace_context, traceparent
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_compressed
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, rounds_pb2, tensors_pb2
from regional.aggregator import RegionalAggregator
from regional.closing import ClosedRound
from regional.export import Export, plan_export
from regional.local_round import RoundTerms

log = logging.getLogger("jurisfed.regional.upstream")
T = TypeVar("T")

LONG_POLL_S = 20.0
# Between plans the global answers FINISHED at once: ask again after this pause (never a busy
# loop), so the next plan's first round is joined within seconds of its start.
# In state_dir: what top-k codecs have not yet sent of this jurisdiction's aggregates.
RESIDUAL_FILE = "residual-regional_to_global.bin"


class Upstream:
    def __init__(
        self,
        aggregator: RegionalAggregator,
        dial: Callable[[], grpc.Channel],
        *,
        signer: ContentSigner,
        forward_margin_s: float,
        stop: threading.Event,
        residual: ResidualFile,
        exit_when_finished: bool,
        quantization_seed: int | None = None,
        contract_key: Ed25519PublicKey | None = None,
        link: Link | None = None,
    ) -> None:
        """`dial` connects to the global aggregator (it may fail while the global is down);
        `signer` signs every aggregate with this regional's certificate key; `residual` keeps
        what top-k codecs have not sent yet; `exit_when_finished`: stop following the global once
        it says the federation finished, instead of waiting for its next plan; `contract_key`, if
        given, is the only key whose round contracts this regional accepts; `link`, if given, hears
        whether each call reached the global (the regional's health follows it)."""
        self._aggregator = aggregator
        self._between_plans = BetweenPlans(stop, exit_when_finished=exit_when_finished, log=log)
        self._residual = residual
        self._dial = dial
        self._channel: grpc.Channel | None = None
        self._stub: global_pb2_grpc.GlobalAggregatorStub
        self._signer = signer
        self._tracer = aggregator.instruments.tracer
        self._margin_s = forward_margin_s
        self._stop = stop
        self._rng = np.random.default_rng(
            secrets.randbits(128) if quantization_seed is None else quantization_seed
        )
        self._pinned_key = contract_key
        self._contract_key = contract_key
        self._link = link

    def run(self) -> None:
        """Follow the global's rounds, plan after plan, until `stop` is set (or, with
        `exit_when_finished`, until the global says the federation finished)."""
        self._aggregator.wait_for_quorum_of_silos(self._stop)
        channel = self._call("reach the global aggregator", self._dial)
        if channel is None:
            if not self._stop.is_set():  # stopping: a round in flight stays open, for the restart
                self._aggregator.finish()
            return
        self._channel = channel
        self._stub = global_pb2_grpc.GlobalAggregatorStub(channel)
        self._call("register with the global aggregator", self._register)
        last_round = 0
        while not self._stop.is_set():
            announcement = self._call("wait for a round", partial(self._wait_for_round, last_round))
            if announcement is None:
                break
            if announcement.state is RoundState.FINISHED:
                if self._between_plans.leave(last_round):
                    break
                continue
            if announcement.state is RoundState.WAITING:
                continue
            last_round = announcement.round
            self._between_plans.round_announced()
            span = self._tracer.start_as_current_span(
                SpanName.REGIONAL_ROUND,
                context=trace_context(announcement.traceparent),
                attributes={
                    Attribute.ROUND: announcement.round,
                    Attribute.JURISDICTION: self._aggregator.jurisdiction,
                },
            )
            with span:
                self._run_round(announcement)
        if not self._stop.is_set():  # stopping: a round in flight stays open, for the restart
            self._aggregator.finish()
        log.info("upstream finished", extra={"last_round": last_round})

    def close(self) -> None:
        """Close the link; a long poll in flight returns at once."""
        if self._channel is not None:
            self._channel.close()

    def _register(self) -> None:
        response = self._stub.RegisterRegional(
            global_pb2.RegisterRegionalRequest(code_version=__version__), timeout=DEFAULT_DEADLINE_S
        )
        log.info("registered with the global aggregator", extra={"jurisdiction": response.jurisdiction})
        try:
            presented = parse_public_keys(response.contract_key)
        except ConfigError:
            presented = []
        if self._pinned_key is None:
            self._contract_key = presented[0] if presented else None
        elif presented and key_id(presented[0]) != key_id(self._pinned_key):
            log.error(
                "the global presents another contract key than the configured one: its contracts are refused",
                extra={"presented": key_id(presented[0]), "configured": key_id(self._pinned_key)},
            )
        if self._contract_key is not None:
            log.info("round contracts are verified", extra={"contract_key_id": key_id(self._contract_key)})

    def _wait_for_round(self, after_round: int) -> RoundAnnouncement:
        request = rounds_pb2.WaitForRoundRequest(after_round=after_round, max_wait_s=LONG_POLL_S)
        return serde.round_announcement_from_proto(self._stub.WaitForRound(request, timeout=LONG_POLL_S + 10))

    def _run_round(self, announcement: RoundAnnouncement) -> None:
        assert announcement.model_spec is not None
        spec = announcement.model_spec
        contract = self._verified(announcement)
        if contract is None:
            return
        if self._aggregator.jurisdiction not in contract.cohort.jurisdictions:
            log.info("not in the round's cohort", extra={"round": announcement.round})
            return
        if not self._aggregator.take_over(announcement.round, contract.sha256):
            if self._aggregator.ran(announcement.round):
                log.info("round already run here", extra={"round": announcement.round})
                return
            if not self._open(announcement, contract, spec):
                return
        closed = self._aggregator.wait_for_close(self._stop)
        if closed is None:
            return
        if closed.mean_delta is None:
            log.warning("round not forwarded", extra={"round": closed.number, "reason": closed.reason})
            return
        export = self._plan(announcement, contract, cohort_silos=closed.cohort_size)
        if not export.allowed:
            self._decline(announcement, contract.sha256, export.decision, ran=True)
            return
        key = f"{self._aggregator.jurisdiction}-{closed.number}-{secrets.token_hex(8)}"
        with self._tracer.start_as_current_span(SpanName.REGIONAL_AGGREGATE):
            # Encoded once (the residual moves once), so the signature covers what every retry sends.
            sent = spec.without(export.withheld)
            delta: Weights = {t.name: closed.mean_delta[t.name] for t in sent.tensors}
            encoded = self._residual.encode(sent, delta, export.codec, self._rng)
            chunks = list(encode_compressed(sent, encoded))
            delivered = self._call(
                "submit the aggregate", lambda: self._submit(closed, chunks, export, key, self._margin_s)
            )
            if delivered is None:
                self._residual.undelivered(sent, encoded)

    def _open(self, announcement: RoundAnnouncement, contract: RoundContract, spec: ModelSpec) -> bool:
        """Check the round against local policy, fetch its model and open it locally."""
        # Closes at the contract's regional deadline, and early enough to forward before the global's.
        elapsed_s = contract.deadlines.global_s - announcement.deadline_in_s
        local_deadline_s = min(
            announcement.deadline_in_s - self._margin_s, contract.deadlines.regional_s - elapsed_s
        )
        if local_deadline_s <= 0:
            log.warning("joined round too late to take part", extra={"round": announcement.round})
            return False
        # The contract against local policy, with the largest cohort this regional could gather.
        # The DP release this round would make against the jurisdiction's budget (privacy_budget.py).
        over_budget = self._aggregator.privacy_refusal(contract, announcement.global_location)
        if over_budget is not None:
            self._decline(announcement, contract.sha256, over_budget)
            return False
        export = self._plan(announcement, contract, cohort_silos=self._aggregator.registered_silos())
        if not export.allowed:
            self._decline(announcement, contract.sha256, export.decision)
            return False
        base = self._call("fetch the round's model", lambda: self._fetch_model(announcement))
        if base is None:
            return False
        self._aggregator.open_round(
            announcement.round,
            spec,
            contract.training,
            base,
            local_deadline_s,
            terms=RoundTerms.of(contract, announcement.contract_signature),
            local_layers=export.withheld,
            traceparent=traceparent(),
        )
        return True

    def _verified(self, announcement: RoundAnnouncement) -> RoundContract | None:
        """The round's contract if the global's key signed it for this very round; else declined."""
        sha256 = hashlib.sha256(announcement.contract).hexdigest()
        refusal = None
        contract = None
        if not announcement.contract:
            refusal = "the round carries no signed contract"
        elif self._contract_key is None:
            refusal = "no contract key: the global presented none and none is configured (contract_key)"
        else:
            try:
                contract = verify_contract(
                    announcement.contract, announcement.contract_signature, self._contract_key
                )
            except (Unauthenticated, InvalidInput) as error:
                refusal = str(error)
        if contract is not None and (contract.round, contract.base.sha256) != (
            announcement.round,
            announcement.base_model_sha256,
        ):
            refusal = (
                f"the contract is for round {contract.round} from model {contract.base.sha256[:12]}, "
                f"but round {announcement.round} from {announcement.base_model_sha256[:12]} was announced"
            )
        self._aggregator.contract_decision(announcement.round, sha256, refusal)
        if refusal is None:
            return contract
        log.error("round contract refused", extra={"round": announcement.round, "reason": refusal})
        self._aggregator.declined(
            announcement.round, sha256, announcement.base_model_sha256, f"contract: {refusal}"
        )
        self._tell_declined(
            announcement.round, "round-contract", refusal, self._aggregator.guard.policy.sha256
        )
        return None

    def _plan(self, announcement: RoundAnnouncement, contract: RoundContract, *, cohort_silos: int) -> Export:
        assert announcement.model_spec is not None
        return plan_export(
            self._aggregator.guard,
            announcement.model_spec,
            round_number=announcement.round,
            global_location=announcement.global_location,
            codec=contract.compression.regional_to_global.to_codec(),
            cohort_silos=cohort_silos,
            privacy=self._aggregator.privacy_spend(contract, announcement.global_location),
        )

    def _decline(
        self, announcement: RoundAnnouncement, contract_sha256: str, decision: Decision, *, ran: bool = False
    ) -> None:
        """Local policy wins: tell the global which rule refused, so it need not wait for us.
        `ran`: the round ran locally (and is recorded) before its aggregate was refused export."""
        round_number = announcement.round
        log.warning(
            "round declined by residency policy",
            extra={"round": round_number, "rule": decision.rule_id, "reason": decision.reason},
        )
        if not ran:
            self._aggregator.declined(
                round_number,
                contract_sha256,
                announcement.base_model_sha256,
                f"rule {decision.rule_id}: {decision.reason}",
            )
        self._tell_declined(round_number, decision.rule_id, decision.reason, decision.policy_sha256)

    def _tell_declined(self, round_number: int, rule_id: str, reason: str, policy_sha256: str) -> None:
        request = global_pb2.DeclineRoundRequest(
            round=round_number, rule_id=rule_id, reason=reason[:900], policy_sha256=policy_sha256
        )
        self._call(
            "tell the global the round is declined",
            lambda: self._stub.DeclineRound(request, timeout=DEFAULT_DEADLINE_S),
        )

    def _fetch_model(self, announcement: RoundAnnouncement) -> Weights:
        assert announcement.model_spec is not None
        request = rounds_pb2.FetchModelRequest(round=announcement.round)
        chunks = self._stub.FetchModel(request, timeout=DEFAULT_DEADLINE_S)
        return receive_model(chunks, announcement.model_spec, announcement.base_model_sha256)

    def _submit(
        self,
        closed: ClosedRound,
        chunks: list[tensors_pb2.TensorChunk],
        export: Export,
        key: str,
        timeout_s: float,
    ) -> bool:
        header = serde.aggregate_header_to_proto(
            AggregateHeader(
                closed.number,
                closed.cohort_size,
                closed.example_total,
                key,
                withheld_tensors=export.withheld,
                policy_sha256=export.decision.policy_sha256,
                compression=export.codec.kind.value,
                content_signature=self._signer.sign(closed.number, digest_chunks(chunks)),
                privacy=closed.privacy,
            )
        )

        def messages() -> Iterator[global_pb2.AggregateMessage]:
            yield global_pb2.AggregateMessage(header=header)
            for chunk in chunks:
                yield global_pb2.AggregateMessage(chunk=chunk)

        response = self._stub.SubmitAggregate(messages(), timeout=max(timeout_s, 1.0))
        self._aggregator.forwarded(closed, compression=export.codec.kind.value)
        log.info(
            "aggregate forwarded",
            extra={"round": closed.number, "silos": closed.cohort_size, "duplicate": response.duplicate},
        )
        return True

    def _call(self, what: str, action: Callable[[], T]) -> T | None:
        return with_retry(what, action, stop=self._stop, log=log, link=self._link)
