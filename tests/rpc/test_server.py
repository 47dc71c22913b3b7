"""A real mTLS gRPC server on port 0: health, reflection, who may connect, who the peer is, limits."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jurisfed.auth.identity import Identity, Tier, peer_identity
from jurisfed.auth.pki import TlsFiles, create_ca, issue
from jurisfed.errors import ConfigError
from jurisfed.rpc.channel import open_channel, wait_until_serving
from jurisfed.rpc.server import RunningServer, Service, serve

TIMEOUT_S = 5.0
PROBE = "jurisfed.test.Probe"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
SILO = Identity("EU", Tier.SILO, "hospital-a")


class Probe:
    """A tiny bytes-in/bytes-out service that records whether any handler ran."""

    def __init__(self) -> None:
        self.calls = 0

    def whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return peer_identity(context).uri.encode()

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return request

    def sized(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return b"x" * int(request)

    def service(self) -> Service:
        handler = grpc.method_handlers_generic_handler(
            PROBE,
            {
                "Whoami": grpc.unary_unary_rpc_method_handler(self.whoami),
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Sized": grpc.unary_unary_rpc_method_handler(self.sized),
            },
        )
        return Service(name=PROBE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture(scope="module")
def server_tls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return issue(pki, REGIONAL, tmp_path_factory.mktemp("regional"))


@pytest.fixture(scope="module")
def client_tls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return issue(pki, SILO, tmp_path_factory.mktemp("silo"))


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def server(probe: Probe, server_tls: TlsFiles) -> Iterator[RunningServer]:
    with serve([probe.service()], server_tls) as running:
        yield running


@pytest.fixture
def channel(server: RunningServer, client_tls: TlsFiles) -> Iterator[grpc.Channel]:
    with open_channel(server.address, client_tls) as channel:
        yield channel


def _check(channel: grpc.Channel, service: str = "") -> int:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
    )
    return int(response.status)


def _call(channel: grpc.Channel, method: str, request: bytes) -> bytes:
    response: bytes = channel.unary_unary(f"/{PROBE}/{method}")(request, timeout=TIMEOUT_S)
    return response


# --- health ---------------------------------------------------------------------------------------


def test_server_listens_on_a_free_port(server: RunningServer) -> None:
    assert server.port > 0
    assert server.address == f"127.0.0.1:{server.port}"


def test_health_says_not_serving_until_the_owner_is_ready(
    server: RunningServer, channel: grpc.Channel
) -> None:
    assert _check(channel) == NOT_SERVING
    assert _check(channel, PROBE) == NOT_SERVING

    server.set_serving(True)
    assert _check(channel) == SERVING
    assert _check(channel, PROBE) == SERVING

    server.set_serving(False)
    assert _check(channel) == NOT_SERVING
    assert _check(channel, PROBE) == NOT_SERVING


def test_health_of_an_unknown_service_is_not_found(server: RunningServer, channel: grpc.Channel) -> None:
    server.set_serving(True)
    with pytest.raises(grpc.RpcError) as caught:
        _check(channel, "jurisfed.v1.Nothing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_flips_health_to_not_serving_before_draining(
    server: RunningServer, channel: grpc.Channel
) -> None:
    server.set_serving(True)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=PROBE), timeout=TIMEOUT_S
    )
    assert next(watch).status == SERVING

    stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 1.0})
    stopper.start()
    # A client watching health hears NOT_SERVING while the server is still draining.
    assert next(watch).status == NOT_SERVING
    stopper.join(timeout=TIMEOUT_S)
    assert not stopper.is_alive()

    server.set_serving(True)  # too late: a stopped server stays down
    server.stop(grace_s=1.0)  # idempotent
    with pytest.raises(grpc.RpcError) as caught:
        _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_leaving_serve_stops_the_server(probe: Probe, server_tls: TlsFiles, client_tls: TlsFiles) -> None:
    with serve([probe.service()], server_tls) as running:
        running.set_serving(True)
        address = running.address
    with open_channel(address, client_tls) as channel, pytest.raises(grpc.RpcError) as caught:
        _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_wait_until_serving_returns_once_the_server_is_ready(
    server: RunningServer, channel: grpc.Channel
) -> None:
    timer = threading.Timer(0.3, server.set_serving, args=(True,))
    timer.start()
    try:
        wait_until_serving(channel, service=PROBE, timeout_s=TIMEOUT_S)
    finally:
        timer.cancel()
    assert _check(channel, PROBE) == SERVING


def test_wait_until_serving_times_out_saying_what_it_last_heard(channel: grpc.Channel) -> None:
    with pytest.raises(
        TimeoutError, match=r"'jurisfed\.test\.Probe' was not SERVING after 0\.5 s.*NOT_SERVING"
    ):
        wait_until_serving(channel, service=PROBE, timeout_s=0.5)


def test_wait_until_serving_times_out_when_nobody_listens(client_tls: TlsFiles) -> None:
    with open_channel("127.0.0.1:1", client_tls) as channel, pytest.raises(TimeoutError, match="UNAVAILABLE"):
        wait_until_serving(channel, timeout_s=0.5)


def test_reflection_lists_the_hosted_services(server: RunningServer, channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT_S
    )
    names = {service.name for response in responses for service in response.list_services_response.service}
    assert names == {PROBE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


# --- who may connect ------------------------------------------------------------------------------


def _self_signed() -> tuple[bytes, bytes]:
    """(certificate, key) naming a valid identity but signed by nobody the server trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    identity = Identity("EU", Tier.SILO, "mallory")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.uri)])
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
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _client_channel(kind: str, server_address: str, pki: Path, tmp_path: Path) -> grpc.Channel:
    federation_ca = (pki / "ca.crt").read_bytes()
    if kind == "no client certificate":
        return grpc.secure_channel(
            server_address, grpc.ssl_channel_credentials(root_certificates=federation_ca)
        )
    if kind == "certificate from another CA":
        other_ca = create_ca(tmp_path / "other-ca")
        _, cert, key = issue(other_ca, SILO, tmp_path / "impostor").read()
    else:
        cert, key = _self_signed()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=federation_ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(server_address, credentials)


@pytest.mark.parametrize(
    "kind", ["no client certificate", "certificate from another CA", "self-signed certificate"]
)
def test_a_client_without_a_federation_certificate_is_refused_at_the_handshake(
    kind: str, server: RunningServer, probe: Probe, pki: Path, tmp_path: Path
) -> None:
    server.set_serving(True)
    with _client_channel(kind, server.address, pki, tmp_path) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, "Whoami", b"")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as caught:
            _check(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert probe.calls == 0


def test_a_client_refuses_a_server_from_another_ca(
    probe: Probe, pki: Path, client_tls: TlsFiles, tmp_path: Path
) -> None:
    impostor = issue(create_ca(tmp_path / "other-ca"), REGIONAL, tmp_path / "impostor")
    with serve([probe.service()], impostor) as running, open_channel(running.address, client_tls) as channel:
        running.set_serving(True)
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, "Whoami", b"")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert probe.calls == 0


# --- who the peer is ------------------------------------------------------------------------------


def test_handlers_see_the_identity_of_the_client_certificate(channel: grpc.Channel) -> None:
    assert _call(channel, "Whoami", b"") == SILO.uri.encode()


def test_a_federation_certificate_without_an_identity_is_unauthenticated(
    server: RunningServer, pki: Path, tmp_path: Path
) -> None:
    # Signed by the federation CA (so the handshake passes) but naming no jurisfed:// URI.
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SILO.uri)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    with grpc.secure_channel(server.address, credentials) as channel, pytest.raises(grpc.RpcError) as caught:
        _call(channel, "Whoami", b"")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "exactly one jurisfed:// URI" in caught.value.details()


# --- limits and start-up errors -------------------------------------------------------------------

LIMIT = 2 * 1024 * 1024


def test_an_oversized_request_is_refused_before_any_handler_runs(
    server: RunningServer, probe: Probe, client_tls: TlsFiles
) -> None:
    # A client allowed to send more than the server accepts.
    with open_channel(server.address, client_tls, max_message_bytes=4 * LIMIT) as channel:
        assert _call(channel, "Echo", b"x" * (LIMIT - 1024)) == b"x" * (LIMIT - 1024)
        calls_before = probe.calls
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, "Echo", b"x" * (LIMIT + 1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert probe.calls == calls_before


def test_an_oversized_response_is_refused(server: RunningServer, client_tls: TlsFiles) -> None:
    with (
        open_channel(server.address, client_tls, max_message_bytes=4 * LIMIT) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _call(channel, "Sized", str(LIMIT + 1).encode())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_client_refuses_to_send_an_oversized_request(channel: grpc.Channel, probe: Probe) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _call(channel, "Echo", b"x" * (LIMIT + 1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert probe.calls == 0


def test_a_port_in_use_is_a_config_error(server: RunningServer, probe: Probe, server_tls: TlsFiles) -> None:
    with (
        pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"),
        serve([probe.service()], server_tls, port=server.port),
    ):
        pass


def test_missing_tls_files_are_a_config_error(probe: Probe, server_tls: TlsFiles, tmp_path: Path) -> None:
    missing = TlsFiles(ca_cert=server_tls.ca_cert, cert=server_tls.cert, key=tmp_path / "absent.key")
    with pytest.raises(ConfigError, match=r"absent\.key"), serve([probe.service()], missing):
        pass


def test_a_service_registered_twice_is_a_config_error(probe: Probe, server_tls: TlsFiles) -> None:
    with (
        pytest.raises(ConfigError, match="registered twice"),
        serve([probe.service(), probe.service()], server_tls),
    ):
        pass
