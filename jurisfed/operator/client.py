"""The ML team's view of and control over rounds, over mTLS with an operator certificate: status
and history of the global aggregator and of regionals, and the round plan, abort and rollback."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from jurisfed.auth.identity import Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.round_plan import RoundPlan
from jurisfed.rounds import (
    Contribution,
    LeftOutEntry,
    PlanProgress,
    Refusal,
    RoundHistory,
    RoundState,
    RoundSummary,
)
from jurisfed.rpc.channel import open_authenticated_channel
from jurisfed.rpc.token_interceptor import TokenSource
from jurisfed.wire import serde
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, regional_pb2, regional_pb2_grpc

STATUS_DEADLINE_S = 10.0
# An abort waits for the round to close (the global gives it up to 30 s).
CONTROL_DEADLINE_S = 45.0


@dataclass(frozen=True)
class FederationStatus:
    current_round: int
    state: RoundState
    jurisdictions: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]
    contributions: tuple[Contribution, ...]
    refusals: tuple[Refusal, ...] = ()
    left_out: tuple[LeftOutEntry, ...] = ()  # jurisdictions that dropped out of rounds
    plan: PlanProgress | None = None


@dataclass(frozen=True)
class RegionalView:
    jurisdiction: str
    current_round: int
    silos: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]
    left_out: tuple[LeftOutEntry, ...] = ()  # silos excluded from rounds, and silos that dropped out


@dataclass(frozen=True)
class Rollback:
    from_version: int | None
    to_version: int
    model_sha256: str


class OperatorClient:
    """One channel per aggregator; `close()` (or `with`) releases them."""

    def __init__(
        self,
        tls: TlsFiles,
        tokens: TokenSource,
        global_address: str | None,
        regional_addresses: dict[str, str],
    ) -> None:
        """Channels to aggregators that are up: each call carries a token from `tokens`."""
        self._tls, self._tokens = tls, tokens
        self._channels: list[grpc.Channel] = []
        self._global = (
            global_pb2_grpc.GlobalAggregatorStub(self._open(global_address, Tier.GLOBAL))
            if global_address
            else None
        )
        self._regionals = {
            jurisdiction: regional_pb2_grpc.RegionalAggregatorStub(self._open(address, Tier.REGIONAL))
            for jurisdiction, address in regional_addresses.items()
        }

    def federation(self) -> FederationStatus:
        status: global_pb2.GlobalStatus = self._global_stub().GetStatus(
            global_pb2.GetGlobalStatusRequest(), timeout=STATUS_DEADLINE_S
        )
        return FederationStatus(
            current_round=status.current_round,
            state=serde.round_state_from_proto(status.state),
            jurisdictions=tuple(status.registered_jurisdictions),
            rounds=tuple(serde.round_summary_from_proto(r) for r in status.rounds),
            contributions=tuple(serde.contribution_from_proto(c) for c in status.contributions),
            refusals=tuple(serde.refusal_from_proto(r) for r in status.refusals),
            left_out=tuple(serde.left_out_from_proto(e) for e in status.left_out),
            plan=serde.plan_progress_from_proto(status.plan) if status.HasField("plan") else None,
        )

    def history(self) -> RoundHistory:
        history: global_pb2.RoundHistory = self._global_stub().GetHistory(
            global_pb2.GetHistoryRequest(), timeout=STATUS_DEADLINE_S
        )
        return serde.round_history_from_proto(history)

    def start_plan(self, plan: RoundPlan) -> PlanProgress:
        """Have the global run `plan` from its next round on."""
        request = global_pb2.StartPlanRequest(plan=serde.round_plan_to_json(plan))
        response: global_pb2.StartPlanResponse = self._global_stub().StartPlan(
            request, timeout=STATUS_DEADLINE_S
        )
        return serde.plan_progress_from_proto(response.plan)

    def abort(self, reason: str) -> tuple[int, PlanProgress | None]:
        """Abort the open round and stop the running plan: (the round aborted or 0, the plan stopped)."""
        response: global_pb2.AbortRoundResponse = self._global_stub().AbortRound(
            global_pb2.AbortRoundRequest(reason=reason), timeout=CONTROL_DEADLINE_S
        )
        plan = serde.plan_progress_from_proto(response.plan) if response.HasField("plan") else None
        return response.round, plan

    def rollback(self, to_version: int, reason: str) -> Rollback:
        response: global_pb2.RollbackResponse = self._global_stub().Rollback(
            global_pb2.RollbackRequest(to_version=to_version, reason=reason), timeout=STATUS_DEADLINE_S
        )
        previous = None if response.from_version < 0 else response.from_version
        return Rollback(previous, response.to_version, response.model_sha256)

    def regional(self, jurisdiction: str) -> RegionalView:
        status: regional_pb2.RegionalStatus = self._regionals[jurisdiction].GetStatus(
            regional_pb2.GetRegionalStatusRequest(), timeout=STATUS_DEADLINE_S
        )
        return RegionalView(
            jurisdiction=status.jurisdiction,
            current_round=status.current_round,
            silos=tuple(status.registered_silos),
            rounds=tuple(serde.round_summary_from_proto(r) for r in status.rounds),
            left_out=tuple(serde.left_out_from_proto(e) for e in status.left_out),
        )

    @property
    def jurisdictions(self) -> tuple[str, ...]:
        return tuple(self._regionals)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _global_stub(self) -> global_pb2_grpc.GlobalAggregatorStub:
        if self._global is None:
            raise ValueError("no global aggregator address was given")
        return self._global

    def _open(self, address: str, tier: Tier) -> grpc.Channel:
        channel, _ = open_authenticated_channel(address, self._tls, self._tokens, expect=tier)
        self._channels.append(channel)
        return channel
