"""The silo's round loop: dial the regional, wait for a task, train, stream the delta back.

The delta is encoded with the round contract's silo_to_regional codec; for the top-k codecs
the silo keeps what it did not send (error feedback) in its state directory, so it is sent in
later rounds, after a restart too. Only the silo dials; nothing dials into it. Transient
failures (regional restarting, network) are retried with backoff; a refusal (round closed,
invalid update) is logged and the silo moves on to the next round, so one bad round never
stops it. Told the federation finished, it waits for the next round plan (asking again every
IDLE_POLL_S, jurisfed/between_plans.py), or, configured with `exit_when_finished`, returns.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opentelemetry import trace

from jurisfed import __version__
from jurisfed.auth.signatures import ContentSigner, digest_chunks
from jurisfed.between_plans import BetweenPlans
from jurisfed.compression.residual_file import ResidualFile
from jurisfed.errors import JurisfedError
from jurisfed.modeling.mlp import Mlp
from jurisfed.round_contract import RoundContract, verify_announced
from jurisfed.rounds import RoundAnnouncement, RoundState, UpdateHeader
from jurisfed.rpc.channel import DEFAULT_DEADLINE_S
from jurisfed.rpc.retry import with_retry
from jurisfed.telemetry import Attribute, SpanName, trace_context
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_compressed
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import regional_pb2, regional_pb2_grpc, rounds_pb2, tensors_pb2
from silo.data import LocalDataset, schema_sha256
from silo.trainer import train

log = logging.getLogger("jurisfed.silo")
T = TypeVar("T")

LONG_POLL_S = 20.0
# A regional that says the federation finished says so at once: ask again after this pause.


@dataclass(frozen=True)
class RoundReport:
    round: int
    accepted: bool
    train_loss: float


class SiloClient:
    def __init__(
        self,
        channel: grpc.Channel,
        dataset: LocalDataset,
        *,
        seed: int,
        stop: threading.Event,
        signer: ContentSigner,
        residual: ResidualFile,
        exit_when_finished: bool,
        tracer: trace.Tracer | None = None,
        contract_key: Ed25519PublicKey | None = None,
    ) -> None:
        """With `contract_key` (the global's), the silo trains only for rounds whose signed
        contract matches what its regional announced. `residual` keeps what top-k codecs have
        not sent yet. `exit_when_finished`: return once the regional says the federation
        finished, instead of waiting for the next plan's rounds."""
        self._contract_key = contract_key
        self._between_plans = BetweenPlans(stop, exit_when_finished=exit_when_finished, log=log)
        self._residual = residual
        self._rng = np.random.default_rng()  # stochastic rounding, from the OS's entropy
        self._stub = regional_pb2_grpc.RegionalAggregatorStub(channel)
        self._signer = signer
        self._tracer = tracer or trace.NoOpTracer()
        self._dataset = dataset
        self._seed = seed
        self._stop = stop

    def run(self) -> list[RoundReport]:
        """Take part in rounds, plan after plan, until `stop` is set (or, with
        `exit_when_finished`, until the federation finishes)."""
        self._call("register", self._register)
        reports: list[RoundReport] = []
        last_round = 0
        while not self._stop.is_set():
            announcement = self._call("wait for a task", partial(self._wait_for_task, last_round))
            if announcement is None:
                break
            if announcement.state is RoundState.FINISHED:
                if self._between_plans.leave(last_round):
                    break
                continue
            if announcement.state is RoundState.WAITING:
                if announcement.exclusion is not None:
                    last_round = announcement.round  # wait for the next round, not this one again
                    self._left_out(announcement)
                continue
            last_round = announcement.round
            self._between_plans.round_announced()
            # This silo's work joins the round's trace, under the regional's span.
            with self._tracer.start_as_current_span(
                SpanName.SILO_TRAIN,
                context=trace_context(announcement.traceparent),
                attributes={Attribute.ROUND: announcement.round},
            ):
                report = self._take_part(announcement)
            if report is not None:
                reports.append(report)
        log.info("left the federation", extra={"rounds_taken": len(reports)})
        return reports

    def _left_out(self, announcement: RoundAnnouncement) -> None:
        """Log why this silo sits the round out; a stale one fetches the round's model to rejoin."""
        assert announcement.exclusion is not None
        code, reason = announcement.exclusion.code, announcement.exclusion.reason
        log.warning(
            "excluded from the round", extra={"round": announcement.round, "code": code, "reason": reason}
        )
        if code == "stale":
            request = rounds_pb2.FetchModelRequest(round=announcement.round)
            synced = self._call(
                "catch up with the current model",
                lambda: sum(1 for _ in self._stub.FetchModel(request, timeout=DEFAULT_DEADLINE_S)),
            )
            if synced is not None:
                log.info("caught up; eligible again from the next round", extra={"round": announcement.round})

    def _register(self) -> None:
        response = self._stub.RegisterSilo(
            regional_pb2.RegisterSiloRequest(
                example_count=len(self._dataset.labels),
                schema_sha256=schema_sha256(self._dataset),
                code_version=__version__,
            ),
            timeout=DEFAULT_DEADLINE_S,
        )
        log.info("registered", extra={"silo_id": response.silo_id, "jurisdiction": response.jurisdiction})

    def _wait_for_task(self, after_round: int) -> RoundAnnouncement:
        request = rounds_pb2.WaitForRoundRequest(after_round=after_round, max_wait_s=LONG_POLL_S)
        return serde.round_announcement_from_proto(self._stub.WaitForTask(request, timeout=LONG_POLL_S + 10))

    def _take_part(self, announcement: RoundAnnouncement) -> RoundReport | None:
        spec, training = announcement.model_spec, announcement.training
        assert spec is not None
        assert training is not None
        contract = self._contract(announcement, spec)
        if contract is None:
            return None
        deadline = time.monotonic() + announcement.deadline_in_s
        start = self._call(
            "fetch the model", lambda: self._fetch_model(announcement.round, spec, announcement)
        )
        if start is None:
            return None
        began = time.monotonic()
        result = train(
            Mlp.parse(spec.architecture), start, self._dataset, training, seed=self._seed + announcement.round
        )
        log.info(
            "trained",
            extra={
                "round": announcement.round,
                "loss": round(result.train_loss, 4),
                "s": round(time.monotonic() - began, 2),
            },
        )
        # Encoded once (the residual moves once), so the signature covers what every retry sends.
        codec = contract.compression.silo_to_regional.to_codec()
        encoded = self._residual.encode(spec, result.delta, codec, self._rng)
        chunks = list(encode_compressed(spec, encoded))
        header = UpdateHeader(
            round=announcement.round,
            example_count=result.example_count,
            idempotency_key=f"{announcement.round}-{secrets.token_hex(8)}",
            train_loss=result.train_loss,
            content_signature=self._signer.sign(announcement.round, digest_chunks(chunks)),
        )
        with self._tracer.start_as_current_span(SpanName.SILO_UPLOAD):
            accepted = self._call(
                "submit the update", lambda: self._submit(header, chunks, deadline - time.monotonic())
            )
        if not accepted:
            self._residual.undelivered(spec, encoded)
        return RoundReport(announcement.round, bool(accepted), result.train_loss)

    def _contract(self, announcement: RoundAnnouncement, spec: ModelSpec) -> RoundContract | None:
        """The round's contract: verified against the global's key when the silo holds it, else as
        its regional (which verified it) relayed it; None, logged, when it does not hold."""
        try:
            if self._contract_key is not None:
                return verify_announced(announcement, self._contract_key, architecture=spec.architecture)
            return RoundContract.from_canonical_json(announcement.contract)
        except JurisfedError as error:
            log.error(
                "round refused: its contract does not hold",
                extra={"round": announcement.round, "reason": str(error)},
            )
            return None

    def _fetch_model(self, round_number: int, spec: ModelSpec, announcement: RoundAnnouncement) -> Weights:
        chunks = self._stub.FetchModel(
            rounds_pb2.FetchModelRequest(round=round_number), timeout=DEFAULT_DEADLINE_S
        )
        return receive_model(chunks, spec, announcement.base_model_sha256)

    def _submit(self, header: UpdateHeader, chunks: list[tensors_pb2.TensorChunk], timeout_s: float) -> bool:
        def messages() -> Iterator[regional_pb2.UpdateMessage]:
            yield regional_pb2.UpdateMessage(header=serde.update_header_to_proto(header))
            for chunk in chunks:
                yield regional_pb2.UpdateMessage(chunk=chunk)

        response = self._stub.SubmitUpdate(messages(), timeout=max(timeout_s, 1.0))
        log.info("update accepted", extra={"round": header.round, "duplicate": response.duplicate})
        return bool(response.accepted)

    def _call(self, what: str, action: Callable[[], T]) -> T | None:
        return with_retry(what, action, stop=self._stop, log=log)
