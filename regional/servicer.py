"""The regional's gRPC face toward its silos: decode, authenticate, delegate, encode."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from jurisfed.auth.identity import Tier, peer_identity
from jurisfed.auth.roles import require_tier
from jurisfed.auth.signatures import peer_certificate_pem
from jurisfed.auth.tokens import Role
from jurisfed.rpc.server import Service, long_poll_budget_s
from jurisfed.rpc.token_interceptor import MethodRoles
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_tensors, split_stream
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import regional_pb2, regional_pb2_grpc, rounds_pb2, tensors_pb2
from regional.aggregator import RegionalAggregator


class RegionalServicer(regional_pb2_grpc.RegionalAggregatorServicer):
    def __init__(self, aggregator: RegionalAggregator) -> None:
        self._aggregator = aggregator

    def RegisterSilo(
        self, request: regional_pb2.RegisterSiloRequest, context: grpc.ServicerContext
    ) -> regional_pb2.RegisterSiloResponse:
        silo_id = self._aggregator.register_silo(
            peer_identity(context), request.example_count, request.schema_sha256, request.code_version
        )
        return regional_pb2.RegisterSiloResponse(silo_id=silo_id, jurisdiction=self._aggregator.jurisdiction)

    def WaitForTask(
        self, request: rounds_pb2.WaitForRoundRequest, context: grpc.ServicerContext
    ) -> rounds_pb2.RoundAnnouncement:
        wait_s = long_poll_budget_s(context, request.max_wait_s)
        announcement = self._aggregator.wait_for_task(peer_identity(context), request.after_round, wait_s)
        return serde.round_announcement_to_proto(announcement)

    def FetchModel(
        self, request: rounds_pb2.FetchModelRequest, context: grpc.ServicerContext
    ) -> Iterator[tensors_pb2.TensorChunk]:
        spec, weights = self._aggregator.base_model(peer_identity(context), request.round)
        yield from encode_tensors(spec, weights)

    def FetchPersonalizedModel(
        self, request: rounds_pb2.FetchModelRequest, context: grpc.ServicerContext
    ) -> Iterator[tensors_pb2.TensorChunk]:
        spec, weights = self._aggregator.personalized_model(peer_identity(context), request.round)
        yield from encode_tensors(spec, weights)

    def SubmitUpdate(
        self, request_iterator: Iterator[regional_pb2.UpdateMessage], context: grpc.ServicerContext
    ) -> regional_pb2.SubmitUpdateResponse:
        peer = peer_identity(context)
        meter = Meter()
        header, chunks = split_stream(meter.wrap(request_iterator))
        receipt = self._aggregator.submit_update(
            peer, serde.update_header_from_proto(header), chunks, meter, peer_certificate_pem(context)
        )
        return regional_pb2.SubmitUpdateResponse(accepted=receipt.accepted, duplicate=receipt.duplicate)

    def GetStatus(
        self, request: regional_pb2.GetRegionalStatusRequest, context: grpc.ServicerContext
    ) -> regional_pb2.RegionalStatus:
        require_tier(peer_identity(context), Tier.OPERATOR, "read the regional's status")
        return regional_pb2.RegionalStatus(
            jurisdiction=self._aggregator.jurisdiction,
            current_round=self._aggregator.current_round(),
            registered_silos=self._aggregator.silos(),
            rounds=[serde.round_summary_to_proto(s) for s in self._aggregator.history()],
            left_out=[serde.left_out_to_proto(e) for e in self._aggregator.left_out()],
        )


SERVICE = regional_pb2.DESCRIPTOR.services_by_name["RegionalAggregator"]
# Which token roles may call each method; anything else is refused before its handler runs.
METHOD_ROLES = MethodRoles.for_service(
    SERVICE.full_name,
    {
        "RegisterSilo": [Role.SILO],
        "WaitForTask": [Role.SILO],
        "FetchModel": [Role.SILO],
        "FetchPersonalizedModel": [Role.SILO],
        "SubmitUpdate": [Role.SILO],
        "GetStatus": [Role.OPERATOR, Role.AUDITOR],
    },
)


def regional_service(aggregator: RegionalAggregator) -> Service:
    servicer = RegionalServicer(aggregator)
    return Service(
        name=SERVICE.full_name,
        register=lambda server: regional_pb2_grpc.add_RegionalAggregatorServicer_to_server(servicer, server),
    )
