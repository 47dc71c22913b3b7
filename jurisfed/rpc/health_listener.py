"""A plaintext listener that serves grpc.health.v1.Health and nothing else.

Kubernetes' native `grpc:` probe cannot present a client certificate, and every jurisfed port
requires one. This listener lets such a probe ask without one: it hosts the health service only
(no reflection, no other service, no interceptor, no data) and answers what the main server's
health says for each of its service names, SERVING or NOT_SERVING, plus `LIVENESS`: SERVING
for as long as the process runs its server, starting and draining included, so a liveness
probe does not restart a node that is only waiting. Any other method is UNIMPLEMENTED.
What it reveals, and who may reach it: docs/security.md, "The health-only port".
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jurisfed.errors import ConfigError
from jurisfed.rpc.addresses import bindable_host, cannot_listen

# The service name a liveness probe asks about (`grpc: {port: ..., service: liveness}`).
LIVENESS = "liveness"
# A HealthCheckRequest is a service name: anything longer is not a probe.
_MAX_REQUEST_BYTES = 1024


class HealthListener:
    """A started health-only listener; the main server mirrors its health into it."""

    def __init__(
        self,
        server: grpc.Server,
        executor: futures.ThreadPoolExecutor,
        servicer: health.HealthServicer,
        port: int,
    ) -> None:
        self._server = server
        self._executor = executor
        self._servicer = servicer
        self.port = port

    @classmethod
    def start(cls, host: str, port: int) -> HealthListener:
        """Listen on host:port (port 0 picks a free one); NOT_SERVING until mirrored, alive at once."""
        executor = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jurisfed-health")
        server = grpc.server(
            executor,
            options=(
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_REQUEST_BYTES),
                ("grpc.compression_enabled_algorithms_bitset", 1),  # identity only, as the main server
            ),
        )
        servicer = health.HealthServicer(experimental_non_blocking=True)
        servicer.set(health.OVERALL_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        address = f"{bindable_host(host)}:{port}"
        try:
            bound_port = server.add_insecure_port(address)
        except RuntimeError:  # gRPC logs the operating system's reason on stderr
            bound_port = 0
        if bound_port == 0:
            executor.shutdown(wait=False)
            raise ConfigError(cannot_listen(address))
        server.start()
        return cls(server, executor, servicer, bound_port)

    def mirror(
        self, names: Iterable[str], status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        """Answer `status` for each of `names`, as the main server does."""
        for name in names:
            self._servicer.set(name, status)

    def stop(self) -> None:
        """Stop at once: the main server has drained, the process is going."""
        self._server.stop(0).wait()
        self._executor.shutdown(wait=False, cancel_futures=True)
