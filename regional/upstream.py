"""The regional's link to the global aggregator: it dials out, follows the global's rounds,
runs each one locally and forwards the compressed aggregate delta — only what its residency
policy allows (see regional/export.py), and tells the global at once when the policy refuses.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

import grpc
import numpy as np

from jurisfed import __version__
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.policy.model import Decision
from jurisfed.rounds import AggregateHeader, RoundAnnouncement, RoundState
from jurisfed.rpc.channel import DEFAULT_DEADLINE_S
from jurisfed.rpc.retry import with_retry
from jurisfed.telemetry import Attribute, SpanName, trace_context, traceparent
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_tensors
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, rounds_pb2, tensors_pb2
from regional.aggregator import ClosedRound, RegionalAggregator
from regional.export import Export, plan_export

log = logging.getLogger("jurisfed.regional.upstream")
T = TypeVar("T")

LONG_POLL_S = 20.0


class Upstream:
    def __init__(
        self,
        aggregator: RegionalAggregator,
        dial: Callable[[], grpc.Channel],
        *,
        signer: ContentSigner,
        forward_margin_s: float,
        stop: threading.Event,
        quantization_seed: int | None = None,
    ) -> None:
        """`dial` connects to the global aggregator (it may fail while the global is down);
        `signer` signs every aggregate with this regional's certificate key."""
        self._aggregator = aggregator
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

    def run(self) -> None:
        """Follow the global's rounds until it says the federation finished or `stop` is set."""
        self._aggregator.wait_for_quorum_of_silos(self._stop)
        channel = self._call("reach the global aggregator", self._dial)
        if channel is None:
            self._aggregator.finish()
            return
        self._channel = channel
        self._stub = global_pb2_grpc.GlobalAggregatorStub(channel)
        self._call("register with the global aggregator", self._register)
        last_round = 0
        while not self._stop.is_set():
            announcement = self._call("wait for a round", partial(self._wait_for_round, last_round))
            if announcement is None or announcement.state is RoundState.FINISHED:
                break
            if announcement.state is RoundState.WAITING:
                continue
            last_round = announcement.round
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

    def _wait_for_round(self, after_round: int) -> RoundAnnouncement:
        request = rounds_pb2.WaitForRoundRequest(after_round=after_round, max_wait_s=LONG_POLL_S)
        return serde.round_announcement_from_proto(self._stub.WaitForRound(request, timeout=LONG_POLL_S + 10))

    def _run_round(self, announcement: RoundAnnouncement) -> None:
        assert announcement.model_spec is not None
        assert announcement.training is not None
        spec = announcement.model_spec
        local_deadline_s = announcement.deadline_in_s - self._margin_s
        if local_deadline_s <= 0:
            log.warning("joined round too late to take part", extra={"round": announcement.round})
            return
        # The contract against local policy, with the largest cohort this regional could gather.
        contract = self._plan(announcement, cohort_silos=self._aggregator.registered_silos())
        if not contract.allowed:
            self._decline(announcement.round, contract.decision)
            return
        base = self._call("fetch the round's model", lambda: self._fetch_model(announcement))
        if base is None:
            return
        self._aggregator.open_round(
            announcement.round,
            spec,
            announcement.training,
            base,
            local_deadline_s,
            local_layers=contract.withheld,
            traceparent=traceparent(),
        )
        closed = self._aggregator.wait_for_close(self._stop)
        if closed.mean_delta is None:
            log.warning("round not forwarded", extra={"round": closed.number, "reason": closed.reason})
            return
        export = self._plan(announcement, cohort_silos=closed.cohort_size)
        if not export.allowed:
            self._decline(closed.number, export.decision)
            return
        key = f"{self._aggregator.jurisdiction}-{closed.number}-{secrets.token_hex(8)}"
        with self._tracer.start_as_current_span(SpanName.REGIONAL_AGGREGATE):
            self._call(
                "submit the aggregate", lambda: self._submit(closed, spec, export, key, self._margin_s)
            )

    def _plan(self, announcement: RoundAnnouncement, *, cohort_silos: int) -> Export:
        assert announcement.model_spec is not None
        return plan_export(
            self._aggregator.guard,
            announcement.model_spec,
            round_number=announcement.round,
            global_location=announcement.global_location,
            compression=announcement.upstream_compression,
            cohort_silos=cohort_silos,
        )

    def _decline(self, round_number: int, decision: Decision) -> None:
        """Local policy wins: tell the global which rule refused, so it need not wait for us."""
        log.warning(
            "round declined by residency policy",
            extra={"round": round_number, "rule": decision.rule_id, "reason": decision.reason},
        )
        self._aggregator.declined(round_number, f"rule {decision.rule_id}: {decision.reason}")
        request = global_pb2.DeclineRoundRequest(
            round=round_number,
            rule_id=decision.rule_id,
            reason=decision.reason[:900],
            policy_sha256=decision.policy_sha256,
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
        self, closed: ClosedRound, spec: ModelSpec, export: Export, key: str, timeout_s: float
    ) -> None:
        assert closed.mean_delta is not None
        sent = spec.without(export.withheld)
        delta: Weights = {t.name: closed.mean_delta[t.name] for t in sent.tensors}
        encoding = tensors_pb2.ENCODING_INT8 if export.compression == "int8" else tensors_pb2.ENCODING_RAW
        chunks = list(encode_tensors(sent, delta, encoding=encoding, rng=self._rng))
        header = serde.aggregate_header_to_proto(
            AggregateHeader(
                closed.number,
                closed.cohort_size,
                closed.example_total,
                key,
                withheld_tensors=export.withheld,
                policy_sha256=export.decision.policy_sha256,
                compression=export.compression,
                content_signature=self._signer.sign(closed.number, digest_chunks(chunks)),
            )
        )

        def messages() -> Iterator[global_pb2.AggregateMessage]:
            yield global_pb2.AggregateMessage(header=header)
            for chunk in chunks:
                yield global_pb2.AggregateMessage(chunk=chunk)

        response = self._stub.SubmitAggregate(messages(), timeout=max(timeout_s, 1.0))
        self._aggregator.forwarded(closed, compression=export.compression)
        log.info(
            "aggregate forwarded",
            extra={"round": closed.number, "silos": closed.cohort_size, "duplicate": response.duplicate},
        )

    def _call(self, what: str, action: Callable[[], T]) -> T | None:
        return with_retry(what, action, stop=self._stop, log=log)
