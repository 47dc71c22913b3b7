"""A round while it is open at one tier, and the long poll that announces it.

The global announces its rounds to regionals and each regional announces its local round to
its silos in exactly the same way: an OPEN announcement as soon as a round newer than the
caller's last is open, FINISHED once the federation is over, WAITING when the caller's wait
ran out (or the server is stopping) with nothing new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jurisfed.aggregation.diagnostics import ProbeLoss
from jurisfed.aggregation.intake import RoundIntake
from jurisfed.aggregation.process import AggregationFactory, RuleState
from jurisfed.compression.codec import Codec
from jurisfed.rounds import RoundAnnouncement, RoundState, TrainingConfig
from jurisfed.tensors import ModelSpec, Weights, weights_sha256


@dataclass
class OpenRound:
    number: int
    spec: ModelSpec
    training: TrainingConfig
    base: Weights
    base_sha256: str
    intake: RoundIntake
    deadline: float  # time.monotonic()
    started: float = field(default_factory=time.monotonic)
    # What the global announces for the regionals' border check; empty at a regional.
    global_location: str = ""
    traceparent: str = ""  # the round's trace context, handed to every participant
    # The signed round contract (canonical JSON) and the global's signature, handed on as received.
    contract: bytes = b""
    contract_signature: bytes = b""

    @classmethod
    def start(
        cls,
        number: int,
        spec: ModelSpec,
        training: TrainingConfig,
        base: Weights,
        duration_s: float,
        *,
        codec: Codec,
        max_concurrent: int,
        base_sha256: str | None = None,
        global_location: str = "",
        traceparent: str = "",
        contract: bytes = b"",
        contract_signature: bytes = b"",
        rule: AggregationFactory | None = None,
        rule_state: RuleState | None = None,
        probe: ProbeLoss | None = None,
    ) -> OpenRound:
        """`rule` folds the contributions (None: the weighted mean), from `rule_state`; `probe`, the
        loss of `base` plus an update on the tier's examples, serves a screen's loss term."""
        intake = RoundIntake(
            number,
            spec,
            codec=codec,
            max_concurrent=max_concurrent,
            rule=rule,
            rule_state=rule_state,
            probe=probe,
        )
        now = time.monotonic()
        sha = base_sha256 if base_sha256 is not None else weights_sha256(spec, base)
        return cls(
            number,
            spec,
            training,
            base,
            sha,
            intake,
            now + duration_s,
            now,
            global_location=global_location,
            traceparent=traceparent,
            contract=contract,
            contract_signature=contract_signature,
        )

    def is_news_to(self, after_round: int) -> bool:
        return self.number > after_round and self.intake.is_open and time.monotonic() < self.deadline

    def announcement(self) -> RoundAnnouncement:
        return RoundAnnouncement(
            state=RoundState.OPEN,
            round=self.number,
            model_spec=self.spec,
            training=self.training,
            deadline_in_s=max(0.0, self.deadline - time.monotonic()),
            base_model_sha256=self.base_sha256,
            global_location=self.global_location,
            traceparent=self.traceparent,
            contract=self.contract,
            contract_signature=self.contract_signature,
        )


@dataclass(frozen=True)
class Board:
    """What a long poll looks at, read under the tier's condition. `current` is the open round
    as this caller may see it (None: nothing for it); `notice` an answer due to it at once (a
    silo excluded from the open round is told so)."""

    current: OpenRound | None
    finished: bool
    stopping: bool
    notice: RoundAnnouncement | None = None


def wait_for_announcement(
    changed: threading.Condition, board: Callable[[], Board], after_round: int, max_wait_s: float
) -> RoundAnnouncement:
    """Block on `changed` (notified on every state change) until there is something to announce."""
    give_up = time.monotonic() + max(0.0, max_wait_s)
    with changed:
        while True:
            now = board()
            if now.current is not None and now.current.is_news_to(after_round):
                return now.current.announcement()
            if now.notice is not None:
                return now.notice
            if now.finished:
                return RoundAnnouncement(RoundState.FINISHED, after_round, None, None, 0.0, "")
            remaining = give_up - time.monotonic()
            if remaining <= 0 or now.stopping:
                return RoundAnnouncement(RoundState.WAITING, after_round, None, None, 0.0, "")
            changed.wait(remaining)
