"""A gRPC server over mutual TLS, with health checking, reflection and error mapping.

`serve` is a context manager: the server listens on entry and stops gracefully on exit.
Health starts NOT_SERVING for every service; the owner calls `set_serving(True)` once it is
really ready (and `set_serving(False, condition=...)` while something it needs is missing, such
as an unreachable upstream), and `stop` flips it back before draining calls, so load balancers
and clients that watch health stop sending work first.

Optionally a second, plaintext listener serves the health protocol alone (see
`jurisfed.rpc.health_listener`), for probes that cannot present a client certificate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jurisfed.auth.pki import TlsFiles
from jurisfed.errors import ConfigError
from jurisfed.rpc.addresses import bindable_host, cannot_listen, dialable_host
from jurisfed.rpc.health_listener import HealthListener
from jurisfed.rpc.interceptors import ErrorMappingInterceptor

DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DEFAULT_GRACE_S = 5.0
# The condition `set_serving` reports by default: the owner is ready to do its work.
READY = "ready"

# Clients ping every 30 s (see `channel`); accept pings down to every 20 s, even with no call
# in flight. The server pings idle clients every 60 s to drop dead connections (a silo whose
# host vanished mid long-poll).
_SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)
# Without these, gRPC's flow-control window grows per stream (BDP probing) and buffers tens
# of MB of each upload ahead of the handler: memory that scales with concurrent uploads and
# that the staging limit does not see. Measured by bench/bench_ingest.py.
_SERVER_FLOW_CONTROL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
)


@dataclass(frozen=True)
class Service:
    """A gRPC service to host: its full name (``jurisfed.v1.RegionalAggregator``) and how to add it."""

    name: str
    register: Callable[[grpc.Server], None]


class RunningServer:
    """A started server: where it listens, its health switch and its stop."""

    def __init__(
        self,
        *,
        server: grpc.Server,
        executor: futures.ThreadPoolExecutor,
        health_servicer: health.HealthServicer,
        service_names: Sequence[str],
        host: str,
        port: int,
        health_listener: HealthListener | None = None,
    ) -> None:
        self._server = server
        self._executor = executor
        self._health = health_servicer
        self._health_listener = health_listener
        self._service_names = (health.OVERALL_HEALTH, *service_names)
        self._lock = threading.Lock()
        self._conditions: dict[str, bool] = {READY: False}
        self._stopped = False
        self.port: int = port
        self.address: str = f"{dialable_host(host)}:{port}"
        self.health_port: int | None = None if health_listener is None else health_listener.port

    def set_serving(self, serving: bool, *, condition: str = READY) -> None:
        """Report whether `condition` holds. Every hosted service, and the server as a whole (""),
        is SERVING while every condition reported so far holds (READY included), else NOT_SERVING.

        Has no effect once `stop` has begun: a stopping server stays NOT_SERVING.
        """
        with self._lock:
            if self._stopped:
                return
            self._conditions[condition] = serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if all(self._conditions.values())
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in self._service_names:
                self._health.set(name, status)
            if self._health_listener is not None:
                self._health_listener.mirror(self._service_names, status)

    def stop(self, grace_s: float) -> None:
        """Flip health to NOT_SERVING, refuse new calls and give running ones `grace_s` to finish.

        The health-only listener, if any, answers NOT_SERVING (and still alive) while calls
        drain, and stops last. Idempotent; returns when the server has stopped.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._health.enter_graceful_shutdown()
            if self._health_listener is not None:
                self._health_listener.mirror(self._service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.stop(grace_s).wait()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._health_listener is not None:
            self._health_listener.stop()


@contextmanager
def serve(
    services: Sequence[Service],
    tls: TlsFiles,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 32,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    health_address: tuple[str, int] | None = None,
) -> Iterator[RunningServer]:
    """Serve `services` over mTLS (clients must present a certificate from the federation CA).

    `interceptors` run inside the error mapping, so what they raise reaches peers as a status.
    `health_address` (host, port), if given, is where a plaintext listener serves nothing but
    grpc.health.v1.Health, mirroring this server's health (`jurisfed.rpc.health_listener`).

    Port 0 picks a free port (see `RunningServer.port`). Health answers NOT_SERVING until
    the caller's `set_serving(True)`. On exit the server stops with a 5 s grace period.
    """
    names = [service.name for service in services]
    if len(set(names)) != len(names):
        raise ConfigError(f"services registered twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    ca_cert, cert, key = tls.read()
    credentials = grpc.ssl_server_credentials(
        ((key, cert),), root_certificates=ca_cert, require_client_auth=True
    )

    listener = None if health_address is None else HealthListener.start(*health_address)
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="jurisfed-rpc")
    try:
        running = _start(
            services,
            credentials=credentials,
            executor=executor,
            host=host,
            port=port,
            max_message_bytes=max_message_bytes,
            interceptors=interceptors,
            health_listener=listener,
        )
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        if listener is not None:
            listener.stop()
        raise
    try:
        yield running
    finally:
        running.stop(grace_s=DEFAULT_GRACE_S)


def _start(
    services: Sequence[Service],
    *,
    credentials: grpc.ServerCredentials,
    executor: futures.ThreadPoolExecutor,
    host: str,
    port: int,
    max_message_bytes: int,
    interceptors: Sequence[grpc.ServerInterceptor],
    health_listener: HealthListener | None,
) -> RunningServer:
    names = [service.name for service in services]
    server = grpc.server(
        executor,
        interceptors=(ErrorMappingInterceptor(), *interceptors),
        options=(
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Without this, gRPC on Linux lets a second server bind a port already in use.
            ("grpc.so_reuseport", 0),
            # Identity only (bit 0): gRPC 1.62 inflates a compressed message whole before it
            # checks the size limit, so a 1 MiB gzip bomb would cost ~1 GiB. jurisfed never
            # compresses messages (tensors are quantized instead); compressed calls are refused
            # with UNIMPLEMENTED before anything is inflated (tests/regional/test_hostile_streams.py).
            ("grpc.compression_enabled_algorithms_bitset", 1),
            *_SERVER_KEEPALIVE_OPTIONS,
            *_SERVER_FLOW_CONTROL_OPTIONS,
        ),
    )
    # Non-blocking: a client watching health does not hold a worker thread.
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in (health.OVERALL_HEALTH, *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.register(server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = f"{bindable_host(host)}:{port}"
    try:
        bound_port = server.add_secure_port(address, credentials)
    except RuntimeError:  # gRPC logs the operating system's reason on stderr
        bound_port = 0
    if bound_port == 0:
        raise ConfigError(cannot_listen(address))
    if health_listener is not None:
        health_listener.mirror((health.OVERALL_HEALTH, *names), health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    return RunningServer(
        server=server,
        executor=executor,
        health_servicer=health_servicer,
        service_names=names,
        host=host,
        port=bound_port,
        health_listener=health_listener,
    )


# Longest a long poll (WaitForTask, WaitForRound) holds a worker thread, whatever the caller asks.
MAX_LONG_POLL_S = 30.0


def long_poll_budget_s(context: grpc.ServicerContext, requested_s: float) -> float:
    """How long a long poll may wait: what the caller asked, capped, and answered before its deadline."""
    remaining = context.time_remaining()
    before_deadline = MAX_LONG_POLL_S if remaining is None else max(0.0, remaining - 1.0)
    return min(max(requested_s, 0.0), MAX_LONG_POLL_S, before_deadline)
