"""Whom a client is talking to: the identity in the server's certificate, verified.

gRPC's Python client does not expose the server's certificate, yet a silo must know which
jurisdiction's regional it is about to send updates to before its policy can allow it. One
TLS handshake with the same files the channel uses answers that: the certificate must chain
to the federation CA and name the host dialled, exactly as gRPC itself checks.
"""

from __future__ import annotations

import socket
import ssl
import time

from cryptography import x509

from jurisfed.auth.identity import Identity, identity_from_certificate
from jurisfed.auth.pki import TlsFiles
from jurisfed.errors import Unauthenticated
from jurisfed.process import split_address


def server_identity(target: str, tls: TlsFiles, *, timeout_s: float = 10.0) -> Identity:
    """The ``jurisfed://`` identity of the server at `target` ("host:port").

    Unauthenticated when the handshake fails or the certificate names no valid identity;
    OSError when the server cannot be reached.
    """
    host, port = split_address(target)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_cert))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as connection,
        ):
            der = connection.getpeercert(binary_form=True)
    except ssl.SSLError as error:
        raise Unauthenticated(f"TLS handshake with {target} failed: {error.reason or error}") from None
    if der is None:
        raise Unauthenticated(f"{target} presented no certificate")
    return identity_from_certificate(x509.load_der_x509_certificate(der))


def wait_for_server_identity(target: str, tls: TlsFiles, *, timeout_s: float) -> Identity:
    """`server_identity`, retried while the server is not listening yet; TimeoutError after
    `timeout_s`. A handshake that fails (a server outside the federation) is not retried."""
    give_up = time.monotonic() + timeout_s
    delay_s = 0.1
    while True:
        try:
            return server_identity(target, tls)
        except OSError as error:
            if time.monotonic() + delay_s > give_up:
                raise TimeoutError(f"{target} was not reachable within {timeout_s:g} s: {error}") from None
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)
