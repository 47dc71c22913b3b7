"""The global aggregator's gRPC face toward regionals and operators."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from global_agg.coordinator import GlobalCoordinator
from jurisfed.auth.identity import Tier, peer_identity
from jurisfed.auth.roles import require_tier
from jurisfed.auth.signatures import peer_certificate_pem
from jurisfed.auth.tokens import Role
from jurisfed.rpc.server import Service, long_poll_budget_s
from jurisfed.rpc.token_interceptor import MethodRoles
from jurisfed.wire import serde
from jurisfed.wire.chunks import encode_tensors, split_stream
from jurisfed.wire.metering import Meter
from jurisfed.wire.v1 import global_pb2, global_pb2_grpc, rounds_pb2, tensors_pb2


class GlobalServicer(global_pb2_grpc.GlobalAggregatorServicer):
    def __init__(self, coordinator: GlobalCoordinator) -> None:
        self._coordinator = coordinator

    def RegisterRegional(
        self, request: global_pb2.RegisterRegionalRequest, context: grpc.ServicerContext
    ) -> global_pb2.RegisterRegionalResponse:
        jurisdiction = self._coordinator.register_regional(peer_identity(context), request.code_version)
        return global_pb2.RegisterRegionalResponse(
            jurisdiction=jurisdiction, contract_key=self._coordinator.contract_key_pem
        )

    def WaitForRound(
        self, request: rounds_pb2.WaitForRoundRequest, context: grpc.ServicerContext
    ) -> rounds_pb2.RoundAnnouncement:
        wait_s = long_poll_budget_s(context, request.max_wait_s)
        announcement = self._coordinator.wait_for_round(peer_identity(context), request.after_round, wait_s)
        return serde.round_announcement_to_proto(announcement)

    def FetchModel(
        self, request: rounds_pb2.FetchModelRequest, context: grpc.ServicerContext
    ) -> Iterator[tensors_pb2.TensorChunk]:
        spec, weights = self._coordinator.base_model(peer_identity(context), request.round)
        yield from encode_tensors(spec, weights)

    def SubmitAggregate(
        self, request_iterator: Iterator[global_pb2.AggregateMessage], context: grpc.ServicerContext
    ) -> global_pb2.SubmitAggregateResponse:
        peer = peer_identity(context)
        meter = Meter()
        header, chunks = split_stream(meter.wrap(request_iterator))
        receipt = self._coordinator.submit_aggregate(
            peer, serde.aggregate_header_from_proto(header), chunks, meter, peer_certificate_pem(context)
        )
        return global_pb2.SubmitAggregateResponse(accepted=receipt.accepted, duplicate=receipt.duplicate)

    def DeclineRound(
        self, request: global_pb2.DeclineRoundRequest, context: grpc.ServicerContext
    ) -> global_pb2.DeclineRoundResponse:
        self._coordinator.decline_round(
            peer_identity(context), request.round, request.rule_id, request.reason, request.policy_sha256
        )
        return global_pb2.DeclineRoundResponse()

    def GetStatus(
        self, request: global_pb2.GetGlobalStatusRequest, context: grpc.ServicerContext
    ) -> global_pb2.GlobalStatus:
        require_tier(peer_identity(context), Tier.OPERATOR, "read the federation's status")
        snapshot = self._coordinator.snapshot()
        status = global_pb2.GlobalStatus(
            current_round=snapshot.current_round,
            state=serde.round_state_to_proto(snapshot.state),
            registered_jurisdictions=snapshot.jurisdictions,
            rounds=[serde.round_summary_to_proto(s) for s in snapshot.rounds],
            contributions=[serde.contribution_to_proto(c) for c in snapshot.contributions],
            refusals=[serde.refusal_to_proto(r) for r in snapshot.refusals],
            left_out=[serde.left_out_to_proto(e) for e in snapshot.left_out],
        )
        if snapshot.plan is not None:
            status.plan.CopyFrom(serde.plan_progress_to_proto(snapshot.plan))
        return status

    def StartPlan(
        self, request: global_pb2.StartPlanRequest, context: grpc.ServicerContext
    ) -> global_pb2.StartPlanResponse:
        operator = peer_identity(context)
        require_tier(operator, Tier.OPERATOR, "start a round plan")
        plan = self._coordinator.start_plan(operator, serde.round_plan_from_json(request.plan))
        return global_pb2.StartPlanResponse(plan=serde.plan_progress_to_proto(plan))

    def AbortRound(
        self, request: global_pb2.AbortRoundRequest, context: grpc.ServicerContext
    ) -> global_pb2.AbortRoundResponse:
        operator = peer_identity(context)
        require_tier(operator, Tier.OPERATOR, "abort a round")
        aborted, plan = self._coordinator.abort(operator, request.reason[:500])
        response = global_pb2.AbortRoundResponse(round=aborted)
        if plan is not None:
            response.plan.CopyFrom(serde.plan_progress_to_proto(plan))
        return response

    def Rollback(
        self, request: global_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> global_pb2.RollbackResponse:
        operator = peer_identity(context)
        require_tier(operator, Tier.OPERATOR, "roll the model back")
        previous, head = self._coordinator.rollback(operator, request.to_version, request.reason[:500])
        return global_pb2.RollbackResponse(
            from_version=-1 if previous is None else previous,
            to_version=head.version,
            model_sha256=head.blob_sha256,
        )

    def GetHistory(
        self, request: global_pb2.GetHistoryRequest, context: grpc.ServicerContext
    ) -> global_pb2.RoundHistory:
        require_tier(peer_identity(context), Tier.OPERATOR, "read the round history")
        return serde.round_history_to_proto(self._coordinator.history())


SERVICE = global_pb2.DESCRIPTOR.services_by_name["GlobalAggregator"]
# Which token roles may call each method; anything else is refused before its handler runs.
METHOD_ROLES = MethodRoles.for_service(
    SERVICE.full_name,
    {
        "RegisterRegional": [Role.REGIONAL],
        "WaitForRound": [Role.REGIONAL],
        "FetchModel": [Role.REGIONAL],
        "SubmitAggregate": [Role.REGIONAL],
        "DeclineRound": [Role.REGIONAL],
        "GetStatus": [Role.OPERATOR, Role.AUDITOR],
        "StartPlan": [Role.OPERATOR],
        "AbortRound": [Role.OPERATOR],
        "Rollback": [Role.OPERATOR],
        "GetHistory": [Role.OPERATOR, Role.AUDITOR],
    },
)


def global_service(coordinator: GlobalCoordinator) -> Service:
    servicer = GlobalServicer(coordinator)
    return Service(
        name=SERVICE.full_name,
        register=lambda server: global_pb2_grpc.add_GlobalAggregatorServicer_to_server(servicer, server),
    )
