"""Contributions to one open round, folded into a streaming weighted mean as they arrive.

Both aggregating tiers use it: the regional for its silos' updates, the global for the
jurisdictions' aggregates. A contribution is staged in a preallocated buffer while it streams
in and is added to the mean only once every chunk has been validated, so a stream that fails
half way (bad chunk, dropped connection) leaves nothing behind. Memory is the accumulator plus
one staging buffer per concurrent upload, whatever the number of contributors.

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

from jurisfed.aggregation.streaming_mean import StreamingWeightedMean
from jurisfed.errors import InvalidInput, JurisfedError, TooLarge, WrongState
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
        self, round_number: int, spec: ModelSpec, *, allowed_encodings: frozenset[int], max_concurrent: int
    ) -> None:
        self.round = round_number
        self.spec = spec
        self._mean = StreamingWeightedMean(spec)
        self._free = [
            TensorAssembler(spec, allowed_encodings=allowed_encodings) for _ in range(max_concurrent)
        ]
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._contributors: dict[str, str] = {}  # sender -> idempotency key
        self._weights: dict[str, float] = {}
        self._rejections: list[Rejection] = []
        self._bytes_received = 0
        self._closed = False

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
                    self._mean.add(update, weight, withheld=withheld)
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
            self._mean.add(update, weight, withheld=withheld)
            self._contributors[sender] = key
            self._weights[sender] = weight

    def count_bytes(self, size: int) -> None:
        with self._lock:
            self._bytes_received += size

    def close(self) -> Weights | None:
        """Stop accepting; return the weighted mean, or None when nobody contributed."""
        with self._lock:
            self._closed = True
            self._free.clear()
            return self._mean.result() if self._mean.contributors else None

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
    def rejections(self) -> tuple[Rejection, ...]:
        with self._lock:
            return tuple(self._rejections)

    @property
    def bytes_received(self) -> int:
        with self._lock:
            return self._bytes_received

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
