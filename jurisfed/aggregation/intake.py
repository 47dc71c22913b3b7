"""Contributions to one open round, folded by the round's aggregation rule as they arrive.

Both aggregating tiers use it: the regional for its silos' updates (the contract's
aggregation.silos), the global for the jurisdictions' aggregates (aggregation.jurisdictions).
A contribution is staged in a preallocated buffer while it streams in and is handed to the
rule only once every chunk has been validated, so a stream that fails half way (bad chunk,
dropped connection) leaves nothing behind. The weighted mean, the default, folds into a
streaming accumulator: memory is the accumulator plus one staging buffer per concurrent upload,
whatever the number of contributors, and a contribution may withhold tensors (each tensor is
the mean of those that carry it). Any other rule runs its AggregationProcess from the state
the tier kept since the previous round (`RuleState`); those rules combine whole models, so a
contribution that withholds tensors is refused. `close` returns what the rule produced: the
result, its next state, its measurements and, for a screening rule, who was kept out.

Durability is the tier's: between "staged" (complete and valid) and "folded", `receive` hands
the update to the tier's `keep` callback, which stores its bytes and records the contribution
(tier_state.py). Only a contribution recorded as new is folded, so a tier restarted after a
crash, which folds its recorded contributions again with `restore`, counts each exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from jurisfed.aggregation.diagnostics import Diagnosis, ProbeLoss
from jurisfed.aggregation.factories import WeightedMean
from jurisfed.aggregation.process import AggregationFactory, Measurements, RuleState
from jurisfed.aggregation.screening import ScreenProcess
from jurisfed.aggregation.streaming_mean import StreamingWeightedMean
from jurisfed.compression.codec import Codec
from jurisfed.errors import InvalidInput, JurisfedError, TooLarge, Unauthenticated, WrongState
from jurisfed.rounds import Rejection
from jurisfed.tensors import ModelSpec, Weights
from jurisfed.wire.chunks import TensorAssembler
from jurisfed.wire.v1 import tensors_pb2

# How long an upload waits for a staging buffer before it is refused as over capacity.
STAGING_WAIT_S = 5.0


@dataclass(frozen=True)
class Receipt:
    accepted: bool
    duplicate: bool


@dataclass(frozen=True)
class Folded:
    """What the round's rule made of the contributions folded into it."""

    result: Weights | None  # None: nothing was folded, or every contribution was kept out
    state: RuleState  # the rule's state for the next round
    measurements: Measurements
    diagnoses: tuple[Diagnosis, ...] = ()  # a screening rule's verdict on every contribution

    @property
    def outliers(self) -> tuple[Diagnosis, ...]:
        return tuple(d for d in self.diagnoses if d.outlier)


class RoundClosed(WrongState):
    """The contribution arrived after the round closed: refused as stale."""


class UploadInterrupted(JurisfedError):
    """The sender's stream broke off (it died or cancelled) before the update was complete."""

    status = grpc.StatusCode.CANCELLED


class IncompleteUpload(InvalidInput):
    """The sender's stream ended before every tensor was complete (it may have died half way)."""


# Both mean the sender did not finish its upload; nothing of it is kept.
UPLOAD_BROKE_OFF = (UploadInterrupted, IncompleteUpload)


# Called with a complete, validated update while the round is known to be open; stores it and
# records the contribution durably. True: recorded now, fold it. False: recorded before (a retry).
Keep = Callable[[Weights], bool]


class RoundIntake:
    def __init__(
        self,
        round_number: int,
        spec: ModelSpec,
        *,
        codec: Codec,
        max_concurrent: int,
        rule: AggregationFactory | None = None,
        rule_state: RuleState | None = None,
        probe: ProbeLoss | None = None,
    ) -> None:
        """`codec`: the round contract's codec for the hop; chunks in any other encoding are refused.
        `rule`: the tier's rule (None: the weighted mean); `rule_state`: its state after the
        previous round (None: its initial state); `probe`: the loss of the round's base plus an
        update on the tier's examples, for a screen's loss term (None: the tier holds none)."""
        self.round = round_number
        self.spec = spec
        self.codec = codec
        self.rule = rule if rule is not None else WeightedMean()
        self._mean: StreamingWeightedMean | None = None
        self._state = rule_state if rule_state is not None else RuleState()
        if isinstance(self.rule, WeightedMean):
            self._mean = StreamingWeightedMean(spec)
        else:
            process = self.rule.create(spec)
            self._state = rule_state if rule_state is not None else process.initialize()
            if isinstance(process, ScreenProcess):
                self._accumulation = process.start(self._state, probe=probe)
            else:
                self._accumulation = process.start(self._state)
        self._free = [TensorAssembler(spec, codec=codec) for _ in range(max_concurrent)]
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._contributors: dict[str, str] = {}  # sender -> idempotency key
        self._weights: dict[str, float] = {}
        self._rejections: list[Rejection] = []
        self._bytes_received = 0
        self._closed = False
        self._folded = Folded(None, self._state, {})

    def receive(
        self,
        sender: str,
        key: str,
        weight: float,
        chunks: Iterable[tensors_pb2.TensorChunk],
        *,
        withheld: frozenset[str] = frozenset(),
        keep: Keep | None = None,
    ) -> Receipt:
        """Stage, validate and add one contribution; a retry with the same key is a no-op.

        `withheld`: tensors the sender declared it leaves out (kept local by its policy).
        `keep`: makes the staged update durable before it is folded (None: memory only). It runs
        under the intake's lock, so a contribution it records is folded before `close` answers.
        """
        try:
            if withheld and self._mean is None:
                raise InvalidInput(
                    f"round {self.round} combines by {self.rule}, which needs every tensor; "
                    f"{sender} withholds {', '.join(sorted(withheld))}"
                )
            with self._lock:
                self._check_open()
                if self._contributors.get(sender) == key:
                    return Receipt(accepted=True, duplicate=True)
                if sender in self._contributors:
                    raise WrongState(f"{sender} already contributed to round {self.round}")
            with self._staging(withheld) as assembler:
                try:
                    for chunk in chunks:
                        assembler.add(chunk)
                except grpc.RpcError:
                    raise UploadInterrupted(
                        f"{sender}'s upload to round {self.round} broke off before it was complete; "
                        "nothing of it was kept"
                    ) from None
                except Unauthenticated:
                    # A stream cut short (its sender killed) also fails its signature; what went
                    # wrong is that it is incomplete, so say that when it is.
                    try:
                        assembler.staged()
                    except InvalidInput as error:
                        raise IncompleteUpload(str(error)) from None
                    raise
                try:
                    update = assembler.staged()
                except InvalidInput as error:
                    raise IncompleteUpload(str(error)) from None
                with self._lock:
                    self._check_open()
                    if sender in self._contributors:
                        return Receipt(accepted=True, duplicate=self._contributors[sender] == key)
                    if keep is not None and not keep(update):
                        return Receipt(accepted=True, duplicate=True)
                    self._fold(sender, update, weight, withheld)
                    self._contributors[sender] = key
                    self._weights[sender] = weight
            return Receipt(accepted=True, duplicate=False)
        except JurisfedError as error:
            with self._lock:
                self._rejections.append(Rejection(sender, error.status.name, str(error)))
            raise

    def restore(
        self, sender: str, key: str, weight: float, update: Weights, *, withheld: frozenset[str] = frozenset()
    ) -> None:
        """Fold a contribution recorded before a restart again (its bytes come from the blob store)."""
        with self._lock:
            self._check_open()
            if sender in self._contributors:
                raise WrongState(f"{sender} already contributed to round {self.round}")
            self._fold(sender, update, weight, withheld)
            self._contributors[sender] = key
            self._weights[sender] = weight

    def count_bytes(self, size: int) -> None:
        with self._lock:
            self._bytes_received += size

    def close(self) -> Weights | None:
        """Stop accepting; the rule's result, or None when nothing counted (see `folded`)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._free.clear()
                self._folded = self._finish()
            return self._folded.result

    @property
    def folded(self) -> Folded:
        """What the rule made of the round: result, next state, measurements, diagnoses."""
        with self._lock:
            if not self._closed:
                raise WrongState(f"round {self.round} is still open")
            return self._folded

    def _finish(self) -> Folded:
        if self._mean is not None:
            result = self._mean.result() if self._mean.contributors else None
            return Folded(result, self._state, {"mean_value": {}, "mean_weight": {}})
        if not self._contributors:
            return Folded(None, self._state, {})
        try:
            output = self._accumulation.finish()
        except WrongState:  # the screen kept every contribution out
            return Folded(None, self._state, {}, self._accumulation.diagnoses)
        return Folded(output.result, output.state, output.measurements, self._accumulation.diagnoses)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return not self._closed

    @property
    def contributors(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._contributors)

    @property
    def total_weight(self) -> float:
        with self._lock:
            return sum(self._weights.values())

    @property
    def weights(self) -> dict[str, float]:
        """Each contributor's weight (example count), outliers included."""
        with self._lock:
            return dict(self._weights)

    @property
    def rejections(self) -> tuple[Rejection, ...]:
        with self._lock:
            return tuple(self._rejections)

    @property
    def bytes_received(self) -> int:
        with self._lock:
            return self._bytes_received

    def _fold(self, sender: str, update: Weights, weight: float, withheld: frozenset[str]) -> None:
        if self._mean is not None:
            self._mean.add(update, weight, withheld=withheld)
        else:
            self._accumulation.add_from(sender, update, weight)

    def _check_open(self) -> None:
        if self._closed:
            raise RoundClosed(f"round {self.round} is closed; the contribution arrived too late")

    @contextmanager
    def _staging(self, withheld: frozenset[str]) -> Iterator[TensorAssembler]:
        """A staging buffer for one upload; folded from in place, then handed back."""
        if not self._slots.acquire(timeout=STAGING_WAIT_S):
            raise TooLarge(f"too many concurrent uploads to round {self.round}; retry later")
        with self._lock:
            assembler = self._free.pop()
        try:
            assembler.reset(withheld)
            yield assembler
        finally:
            with self._lock:
                if not self._closed:  # a closed round lets its staging memory go
                    self._free.append(assembler)
            self._slots.release()
