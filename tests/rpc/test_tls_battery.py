"""The TLS battery of issue 4 against a real mTLS server: each bad certificate is refused before any
handler runs.

The server is a regional of EU as `serve` starts it, with the revocation and jurisdiction
interceptors a tier adds. No client certificate, a self-signed one and an expired one fail the
TLS handshake (the client sees UNAVAILABLE); a certificate revoked while the server runs is
UNAUTHENTICATED on its next call, on a new connection and on the one it already had; a silo of
another jurisdiction is PERMISSION_DENIED. The probe's counter proves no handler ran.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jurisfed.auth.identity import GLOBAL_JURISDICTION, Identity, Tier, peer_identity
from jurisfed.auth.pki import TlsFiles, create_ca, issue
from jurisfed.auth.revocation import DEFAULT_CHECK_INTERVAL_S, publish_crl
from jurisfed.cli import main
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.jurisdiction_interceptor import JurisdictionInterceptor
from jurisfed.rpc.revocation_interceptor import revocation_interceptor
from jurisfed.rpc.server import RunningServer, Service, serve

TIMEOUT_S = 5.0
PROBE = "jurisfed.test.Probe"
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
SILO = Identity("EU", Tier.SILO, "hospital-a")
OTHER_SILO = Identity("EU", Tier.SILO, "hospital-b")
FOREIGN_SILO = Identity("US", Tier.SILO, "clinic-x")
OPERATOR = Identity(GLOBAL_JURISDICTION, Tier.OPERATOR, "ml-team")


class Probe:
    """A one-method service that counts the calls its handler served."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
        return peer_identity(context).uri.encode()

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            PROBE, {"Whoami": grpc.unary_unary_rpc_method_handler(self.whoami)}
        )
        return Service(name=PROBE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA of its own with a revocation list, so revoking here touches no other test."""
    ca_dir = create_ca(tmp_path_factory.mktemp("battery") / "ca")
    publish_crl(ca_dir)
    return ca_dir


@pytest.fixture(scope="module")
def certificates(ca: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Identity, TlsFiles]:
    return {
        identity: issue(ca, identity, tmp_path_factory.mktemp(identity.node))
        for identity in (REGIONAL, OTHER_SILO, FOREIGN_SILO, OPERATOR)
    }


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def server(probe: Probe, ca: Path, certificates: dict[Identity, TlsFiles]) -> Iterator[RunningServer]:
    interceptors = [
        revocation_interceptor(ca / "ca.crt", ca / "crl.pem"),
        JurisdictionInterceptor(REGIONAL.jurisdiction),
    ]
    with serve([probe.service()], certificates[REGIONAL], interceptors=interceptors) as running:
        running.set_serving(True)
        yield running


def whoami(channel: grpc.Channel) -> bytes:
    response: bytes = channel.unary_unary(f"/{PROBE}/Whoami")(b"", timeout=TIMEOUT_S)
    return response


def refusal(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        whoami(channel)
    return caught.value


def health(channel: grpc.Channel) -> int:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    status: int = response.status
    return status


# --- clients without a valid federation certificate: refused at the handshake ---------------------


def _self_signed() -> tuple[bytes, bytes]:
    """(certificate, key) naming the EU silo's identity, signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SILO.uri)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SILO.uri)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _handshake_client(kind: str, address: str, ca: Path, tmp_path: Path) -> grpc.Channel:
    federation_ca = (ca / "ca.crt").read_bytes()
    if kind == "no client certificate":
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=federation_ca))
    if kind == "self-signed certificate":
        cert, key = _self_signed()
    else:
        now = datetime.datetime.now(datetime.UTC)
        expired = issue(
            ca, SILO, tmp_path / "expired", not_before=now - datetime.timedelta(days=3), valid_days=1
        )
        _, cert, key = expired.read()
        assert x509.load_pem_x509_certificate(cert).not_valid_after_utc < now
    credentials = grpc.ssl_channel_credentials(
        root_certificates=federation_ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(address, credentials)


@pytest.mark.parametrize("kind", ["no client certificate", "self-signed certificate", "expired certificate"])
def test_a_client_without_a_valid_certificate_fails_the_handshake(
    kind: str, server: RunningServer, probe: Probe, ca: Path, tmp_path: Path
) -> None:
    with _handshake_client(kind, server.address, ca, tmp_path) as channel:
        assert refusal(channel).code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as caught:
            health(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert probe.calls == 0


# --- revocation while the server runs -------------------------------------------------------------


def test_a_certificate_revoked_while_the_server_runs_is_refused_on_its_next_call(
    server: RunningServer,
    probe: Probe,
    ca: Path,
    certificates: dict[Identity, TlsFiles],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    silo_tls = issue(ca, SILO, tmp_path / "silo")
    serial = f"{x509.load_pem_x509_certificate(silo_tls.cert.read_bytes()).serial_number:X}"
    with open_channel(server.address, silo_tls) as open_before:
        assert whoami(open_before) == SILO.uri.encode()
        assert probe.calls == 1

        assert main(["pki", "revoke", "--ca", str(ca), "--cert", str(silo_tls.cert)]) == 0
        assert serial in capsys.readouterr().out
        time.sleep(DEFAULT_CHECK_INTERVAL_S + 0.2)  # the server looks at the file at most every second

        with open_channel(server.address, silo_tls) as opened_after:
            error = refusal(opened_after)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details().startswith(f"certificate serial {serial} ({SILO}) was revoked on ")
            with pytest.raises(grpc.RpcError) as caught:
                health(opened_after)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # gRPC's own callback-style handler (health Watch) is guarded as well.
            watch = health_pb2_grpc.HealthStub(opened_after).Watch(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
            with pytest.raises(grpc.RpcError) as caught:
                next(watch)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "was revoked" in caught.value.details()
        # gRPC keeps connections open; the check runs per call, so the old one is refused too.
        assert refusal(open_before).code() == grpc.StatusCode.UNAUTHENTICATED
    assert probe.calls == 1

    # Only that certificate: another silo of the same CA is still served (the list did not fail closed).
    with open_channel(server.address, certificates[OTHER_SILO]) as other:
        assert whoami(other) == OTHER_SILO.uri.encode()
    assert probe.calls == 2


# --- another jurisdiction -------------------------------------------------------------------------


def test_a_silo_of_another_jurisdiction_is_refused_before_any_handler_runs(
    server: RunningServer, probe: Probe, certificates: dict[Identity, TlsFiles]
) -> None:
    with open_channel(server.address, certificates[FOREIGN_SILO]) as channel:
        error = refusal(channel)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"{FOREIGN_SILO} belongs to jurisdiction US; this server serves only EU"
    assert probe.calls == 0


def test_an_operator_console_may_call_across_jurisdictions(
    server: RunningServer, probe: Probe, certificates: dict[Identity, TlsFiles]
) -> None:
    with open_channel(server.address, certificates[OPERATOR]) as channel:
        assert whoami(channel) == OPERATOR.uri.encode()
    assert probe.calls == 1
