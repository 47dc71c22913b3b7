"""A layer marked local in a jurisdiction's policy never appears in what its regional sends.

The EU example policy keeps head/bias local. The real EU regional process dials a recording
relay instead of the global: a gRPC server on localhost holding the global's certificate, which
passes every call on to the real global over mutual TLS as the EU regional and keeps a copy of
every message the regional sent. The assertions are on those bytes, exactly as they crossed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from rounds_support import (
    GLOBAL,
    LOCAL_LAYERS,
    SPEC,
    Cluster,
    regional_identity,
    write_plan,
)

from jurisfed.auth.identity import Tier
from jurisfed.auth.tokens import Role
from jurisfed.store.tier_state import RoundStatus
from jurisfed.tensors import Weights
from jurisfed.wire.v1 import global_pb2, witness_pb2

pytestmark = pytest.mark.slow

SUBMIT = "/jurisfed.v1.GlobalAggregator/SubmitAggregate"
# Every method the regional may call on the global: (client streaming, server streaming).
METHODS = {
    f"/{service.full_name}/{method.name}": (method.client_streaming, method.server_streaming)
    for service in (
        global_pb2.DESCRIPTOR.services_by_name["GlobalAggregator"],
        witness_pb2.DESCRIPTOR.services_by_name["AuditWitness"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    )
    for method in service.methods
}
EXAMPLES = 64  # a power of two: the mean of one silo's update is that update, bit for bit
# The local layer's values stand out: nothing else in the update is that large.
LOCAL_VALUES = np.array([2.53125, -3.40625, 4.28125], dtype=np.float32)


class RecordingRelay(grpc.GenericRpcHandler):
    """Relays each call, as raw bytes, to `upstream`; keeps every request message it relays."""

    def __init__(self, upstream: grpc.Channel) -> None:
        self._upstream = upstream
        self._lock = threading.Lock()
        self.sent: list[tuple[str, bytes]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method not in METHODS:
            return None
        client_streaming, server_streaming = METHODS[method]
        if client_streaming:
            relay_stream = self._upstream.stream_unary(method)
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: self._relay(context, relay_stream, self._kept(method, requests))
            )
        if server_streaming:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self._relay_stream(context, method, request)
            )
        relay_call = self._upstream.unary_unary(method)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._relay(context, relay_call, next(self._kept(method, [request])))
        )

    def _kept(self, method: str, messages: Iterable[bytes]) -> Iterator[bytes]:
        for message in messages:
            with self._lock:
                self.sent.append((method, message))
            yield message

    def _relay(self, context: grpc.ServicerContext, call: Callable[..., bytes], request: Any) -> bytes:
        try:
            return call(request, timeout=context.time_remaining())
        except grpc.RpcError as error:
            context.abort(error.code(), error.details() or "")
            raise

    def _relay_stream(self, context: grpc.ServicerContext, method: str, request: bytes) -> Iterator[bytes]:
        next(self._kept(method, [request]))
        try:
            yield from self._upstream.unary_stream(method)(request, timeout=context.time_remaining())
        except grpc.RpcError as error:
            context.abort(error.code(), error.details() or "")


def distinctive_update() -> Weights:
    """Every tensor in small exact binary fractions, the local layer in large ones."""
    update = {
        t.name: ((np.arange(t.size) % 17 - 8) / 64 + 0.25 * index).astype(np.float32).reshape(t.shape)
        for index, t in enumerate(SPEC.tensors)
    }
    update["head/bias"] = LOCAL_VALUES
    return update


def test_a_layer_the_policy_keeps_local_never_crosses_the_border(cluster: Cluster, tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        rounds=1,
        deadlines={"silo_s": 10.0, "regional_s": 10.0, "global_s": 20.0},
        # The EU policy requires a compressed codec on the border hop: top-k keeping every value
        # sends each as raw float32, so any value of the local layer would travel as its own bytes.
        compression={
            "silo_to_regional": {"codec": "raw"},
            "regional_to_global": {"codec": "top-k", "density": 1.0},
        },
    )
    cluster.start_global(plan=str(plan))
    upstream = cluster.channel(
        cluster.addresses["global"], regional_identity("EU"), Role.REGIONAL, Tier.GLOBAL
    )
    relay = RecordingRelay(upstream)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[relay])
    ca_cert, cert, key = cluster.tls(GLOBAL).read()
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials([(key, cert)], root_certificates=ca_cert, require_client_auth=True),
    )
    server.start()
    try:
        cluster.start_regional("EU", ["silo-a"], global_address=f"127.0.0.1:{port}")
        silo = cluster.silo("EU", "silo-a", examples=EXAMPLES)
        update = distinctive_update()
        task = silo.next_round(0)
        silo.fetch(task.round, task.base_model_sha256)
        assert silo.submit(task.round, update, examples=EXAMPLES, key="silo-a-1").accepted
        cluster.wait_until_finished()
    finally:
        server.stop(grace=None)

    assert [r.state for r in cluster.state("global").rounds()] == [RoundStatus.COMMITTED]
    messages = [
        global_pb2.AggregateMessage.FromString(data) for method, data in relay.sent if method == SUBMIT
    ]
    headers = [m.header for m in messages if m.HasField("header")]
    chunks = [m.chunk for m in messages if m.HasField("chunk")]
    assert [h.round for h in headers] == [1]
    local = LOCAL_LAYERS["EU"]
    assert tuple(headers[0].withheld_tensors) == local
    carried = [t.name for t in SPEC.tensors if t.name not in local]
    assert sorted({c.name for c in chunks}) == sorted(carried)
    assert not any(c.name in local or c.name.startswith("head/bias") for c in chunks)

    # On the wire: every carried tensor's values are there byte for byte, the local layer's are not.
    wire = b"".join(data for _, data in relay.sent)
    for name in carried:
        assert update[name].astype("<f4").tobytes() in wire, name
    assert LOCAL_VALUES.astype("<f4").tobytes() not in wire
    for value in LOCAL_VALUES:
        assert value.astype("<f4").tobytes() not in wire
