"""Refuse calls from revoked certificates, on every call, before any handler runs.

gRPC verifies the client certificate's chain and dates at the TLS handshake but knows
nothing of revocation, and keeps connections open for as long as both ends like. So the
check runs per call: a certificate revoked while the server runs is refused on its next call,
on a new connection or on one opened before the revocation, within about a second of the CRL
file changing (see `jurisfed.auth.revocation.RevocationList`). A refusal is UNAUTHENTICATED
``certificate serial ... was revoked on ...``.

Place this interceptor before the token interceptor: a revoked node's token is not even looked
at.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import grpc
from cryptography import x509

from jurisfed.auth.identity import PEER_CERT_KEY
from jurisfed.auth.revocation import DEFAULT_CHECK_INTERVAL_S, RevocationList
from jurisfed.errors import Unauthenticated
from jurisfed.rpc.call_guard import AdmissionInterceptor


class RevocationInterceptor(AdmissionInterceptor):
    """Checks the verified peer certificate of every call against `revocations`."""

    def __init__(self, revocations: RevocationList) -> None:
        self._revocations = revocations

    @contextlib.contextmanager
    def admit(self, context: grpc.ServicerContext) -> Iterator[None]:
        self._revocations.check(peer_certificate(context))
        yield


def revocation_interceptor(
    ca_cert: Path, crl: Path, *, check_interval_s: float = DEFAULT_CHECK_INTERVAL_S
) -> grpc.ServerInterceptor:
    """The interceptor a tier adds to `serve(..., interceptors=[...])` when its config names a CRL.

    `ConfigError` at start-up when `ca_cert` or `crl` cannot be read, the CRL is not signed by
    that CA or is past its nextUpdate.
    """
    return RevocationInterceptor(RevocationList(ca_cert, crl, check_interval_s=check_interval_s))


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate:
    """The client certificate the TLS handshake verified for this call; `Unauthenticated` if none."""
    pems = context.auth_context().get(PEER_CERT_KEY, [])
    if len(pems) != 1:
        raise Unauthenticated("the call carries no client certificate")
    return _certificate(bytes(pems[0]))


@functools.lru_cache(maxsize=4096)
def _certificate(pem: bytes) -> x509.Certificate:
    """Parsed once per certificate: a peer makes many calls with the same one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("peer certificate cannot be parsed") from None
