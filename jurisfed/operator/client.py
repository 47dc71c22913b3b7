"""Status of the global aggregator and of regionals, read over mTLS with an operator certificate."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from jurisfed.auth.identity import Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.rounds import Contribution, Refusal, RoundState, RoundSummary
from jurisfed.rpc.channel import open_authenticated_channel
from jurisfed.rpc.token_interceptor import TokenSource
from jurisfed.wire import serde
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, regional_pb2, regional_pb2_grpc

STATUS_DEADLINE_S = 10.0


@dataclass(frozen=True)
class FederationStatus:
    current_round: int
    state: RoundState
    jurisdictions: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]
    contributions: tuple[Contribution, ...]
    refusals: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class RegionalView:
    jurisdiction: str
    current_round: int
    silos: tuple[str, ...]
    rounds: tuple[RoundSummary, ...]


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
        if self._global is None:
            raise ValueError("no global aggregator address was given")
        status: global_pb2.GlobalStatus = self._global.GetStatus(
            global_pb2.GetGlobalStatusRequest(), timeout=STATUS_DEADLINE_S
        )
        return FederationStatus(
            current_round=status.current_round,
            state=serde.round_state_from_proto(status.state),
            jurisdictions=tuple(status.registered_jurisdictions),
            rounds=tuple(serde.round_summary_from_proto(r) for r in status.rounds),
            contributions=tuple(serde.contribution_from_proto(c) for c in status.contributions),
            refusals=tuple(serde.refusal_from_proto(r) for r in status.refusals),
        )

    def regional(self, jurisdiction: str) -> RegionalView:
        status: regional_pb2.RegionalStatus = self._regionals[jurisdiction].GetStatus(
            regional_pb2.GetRegionalStatusRequest(), timeout=STATUS_DEADLINE_S
        )
        return RegionalView(
            jurisdiction=status.jurisdiction,
            current_round=status.current_round,
            silos=tuple(status.registered_silos),
            rounds=tuple(serde.round_summary_from_proto(r) for r in status.rounds),
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

    def _open(self, address: str, tier: Tier) -> grpc.Channel:
        channel, _ = open_authenticated_channel(address, self._tls, self._tokens, expect=tier)
        self._channels.append(channel)
        return channel
