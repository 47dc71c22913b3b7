"""Client channels over mutual TLS, call deadlines, and waiting for a server to be ready.

Every call a jurisfed client makes passes a deadline (`timeout=`); gRPC sets none by default,
so a call to a hung peer would otherwise wait forever.
"""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles
from jurisfed.auth.server_identity import server_identity
from jurisfed.errors import NotAllowed
from jurisfed.rpc.server import DEFAULT_MAX_MESSAGE_BYTES
from jurisfed.rpc.token_interceptor import TokenSource, token_channel_credentials

# Deadline for an ordinary call (register, status, a small upload).
DEFAULT_DEADLINE_S = 30.0

KEEPALIVE_TIME_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0

_FIRST_POLL_S = 0.05
_MAX_POLL_S = 1.0


def open_channel(
    target: str,
    tls: TlsFiles,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tokens: TokenSource | None = None,
    audience: str = "",
) -> grpc.Channel:
    """A channel to `target` ("host:port") that presents this node's certificate (mTLS).

    The server certificate must chain to the federation CA and name `target`'s host in a
    DNS or IP SAN. With `tokens`, every call also carries a fresh token for `audience`, the
    server's identity URI. Keepalive pings every 30 s, also while idle, so long polls across
    NATs and firewalls survive and dead connections are noticed.
    """
    ca_cert, cert, key = tls.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_cert, private_key=key, certificate_chain=cert
    )
    if tokens is not None:
        credentials = token_channel_credentials(credentials, tokens, audience)
    return grpc.secure_channel(
        target,
        credentials,
        options=(
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME_S * 1000)),
            ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ),
    )


def open_authenticated_channel(
    target: str,
    tls: TlsFiles,
    tokens: TokenSource,
    *,
    expect: Tier,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[grpc.Channel, Identity]:
    """A channel whose every call carries a token addressed to the server at `target`.

    The server's identity comes from its certificate (one TLS handshake, verified against the
    federation CA); a server that is not a `expect` node is refused (NotAllowed). OSError while
    the server cannot be reached, so callers can retry.
    """
    server = server_identity(target, tls)
    if server.tier is not expect:
        raise NotAllowed(f"{target} is {server}, not a {expect.value} node")
    channel = open_channel(
        target, tls, max_message_bytes=max_message_bytes, tokens=tokens, audience=server.uri
    )
    return channel, server


def wait_until_serving(channel: grpc.Channel, *, service: str = "", timeout_s: float) -> None:
    """Poll the standard health service until `service` ("" = the whole server) is SERVING.

    Raises `TimeoutError` saying what the server last answered when `timeout_s` runs out.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    deadline = time.monotonic() + timeout_s
    poll_s = _FIRST_POLL_S
    last_answer = "no answer"
    while True:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        try:
            response = stub.Check(request, timeout=remaining_s)
        except grpc.RpcError as error:
            last_answer = f"{error.code().name}: {error.details()}"
        else:
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last_answer = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        time.sleep(min(poll_s, remaining_s))
        poll_s = min(poll_s * 2, _MAX_POLL_S)
    name = repr(service) if service else "the server"
    raise TimeoutError(f"{name} was not SERVING after {timeout_s:g} s (last answer: {last_answer})")
