"""Tokens on a real mTLS gRPC server: the JWT battery is refused before any handler runs.

The server is built as `serve` builds it (same TLS credentials, client certificates required)
plus the token interceptor, which `serve` does not take yet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.auth.replay import ReplayCache
from jurisfed.auth.token_keys import KeySet, install_public_key
from jurisfed.auth.tokens import Role, TokenMinter, TokenVerifier
from jurisfed.errors import ConfigError, Unauthenticated
from jurisfed.rpc.channel import open_channel
from jurisfed.rpc.interceptors import ErrorMappingInterceptor
from jurisfed.rpc.token_interceptor import (
    MethodRoles,
    TokenInterceptor,
    current_claims,
    token_call_credentials,
    token_channel_credentials,
)
from jurisfed.wire.v1 import regional_pb2

TIMEOUT_S = 5.0
SERVICE = "jurisfed.test.Guarded"
LEEWAY_S = 60
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
OTHER_REGIONAL = Identity("EU", Tier.REGIONAL, "eu-2")
SILO = Identity("EU", Tier.SILO, "hospital-a")
OTHER_SILO = Identity("EU", Tier.SILO, "hospital-b")
OPERATOR = Identity("EU", Tier.OPERATOR, "ml-team")
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED

POLICY = MethodRoles.for_service(
    SERVICE,
    {
        "Submit": [Role.SILO],
        "StartRound": [Role.OPERATOR],
        "ReadAudit": [Role.AUDITOR, Role.OPERATOR],
        "Upload": [Role.SILO],
    },
)


class Guarded:
    """Handlers of each kind that record which verified caller reached them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _record(self) -> bytes:
        claims = current_claims()
        with self._lock:
            self.calls.append(f"{claims.subject} as {claims.role.value}")
        return f"{claims.subject} as {claims.role.value}".encode()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._record()

    def streaming_response(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"evidence 1"
        yield self._record()  # the claims are still there after the first yield

    def streaming_request(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        received = b"".join(requests)
        return self._record() + b" sent " + received

    def register(self, server: grpc.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Submit": grpc.unary_unary_rpc_method_handler(self.unary),
                "StartRound": grpc.unary_unary_rpc_method_handler(self.unary),
                "ReadAudit": grpc.unary_stream_rpc_method_handler(self.streaming_response),
                "Upload": grpc.stream_unary_rpc_method_handler(self.streaming_request),
                "Unlisted": grpc.unary_unary_rpc_method_handler(self.unary),
            },
        )
        server.add_generic_rpc_handlers((handler,))


@dataclass
class Federation:
    """Certificates, token keys and the key-set directory of the regional under test."""

    regional_tls: TlsFiles
    silo_tls: TlsFiles
    other_silo_tls: TlsFiles
    operator_tls: TlsFiles
    key_dir: Path
    silo_key: ec.EllipticCurvePrivateKey
    operator_key: ec.EllipticCurvePrivateKey
    auditor_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def certificates(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Identity, TlsFiles]:
    return {
        identity: issue(pki, identity, tmp_path_factory.mktemp(identity.node))
        for identity in (REGIONAL, SILO, OTHER_SILO, OPERATOR)
    }


@pytest.fixture
def federation(certificates: dict[Identity, TlsFiles], tmp_path: Path) -> Federation:
    key_dir = tmp_path / "token-keys"
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("silo", "operator", "auditor")}
    install_public_key(key_dir, Role.SILO, "silo-1", keys["silo"].public_key())
    install_public_key(key_dir, Role.OPERATOR, "operator-1", keys["operator"].public_key())
    install_public_key(key_dir, Role.AUDITOR, "auditor-1", keys["auditor"].public_key())
    return Federation(
        certificates[REGIONAL],
        certificates[SILO],
        certificates[OTHER_SILO],
        certificates[OPERATOR],
        key_dir,
        keys["silo"],
        keys["operator"],
        keys["auditor"],
    )


@contextmanager
def guarded_server(service: Guarded, federation: Federation, policy: MethodRoles = POLICY) -> Iterator[str]:
    """What `serve` would start with `interceptors=[TokenInterceptor(...)]`; yields its address."""
    verifier = TokenVerifier(
        audience=REGIONAL.uri,
        keys=KeySet(federation.key_dir, check_interval_s=0),
        replay=ReplayCache(),
        leeway_s=LEEWAY_S,
    )
    ca_cert, cert, key = federation.regional_tls.read()
    credentials = grpc.ssl_server_credentials(
        ((key, cert),), root_certificates=ca_cert, require_client_auth=True
    )
    executor = futures.ThreadPoolExecutor(max_workers=8)
    server = grpc.server(
        executor, interceptors=(ErrorMappingInterceptor(), TokenInterceptor(verifier, policy))
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


@pytest.fixture
def service() -> Guarded:
    return Guarded()


@pytest.fixture
def address(service: Guarded, federation: Federation) -> Iterator[str]:
    with guarded_server(service, federation) as running:
        yield running


@pytest.fixture
def silo_channel(address: str, federation: Federation) -> Iterator[grpc.Channel]:
    with open_channel(address, federation.silo_tls) as channel:
        yield channel


def call(
    channel: grpc.Channel, method: str, token: str | None, *, metadata: tuple[tuple[str, str], ...] = ()
) -> bytes:
    if token is not None:
        metadata = (*metadata, ("authorization", f"Bearer {token}"))
    response: bytes = channel.unary_unary(f"/{SERVICE}/{method}")(b"", metadata=metadata, timeout=TIMEOUT_S)
    return response


def refusal(
    channel: grpc.Channel, method: str, token: str | None, *, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, method, token, metadata=metadata)
    return caught.value


# --- tokens as an attacker would build them -------------------------------------------------------


def claims_for(identity: Identity, role: Role, /, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": identity.uri,
        "sub": identity.uri,
        "aud": REGIONAL.uri,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
        "jurisdiction": identity.jurisdiction,
        "tier": identity.tier.value,
        "role": role.value,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def sign(claims: dict[str, object], key: ec.EllipticCurvePrivateKey, kid: str = "silo-1") -> str:
    return jwt.PyJWS().encode(json.dumps(claims).encode(), key, "ES256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none(claims: dict[str, object]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "silo-1"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, object], public_key: ec.EllipticCurvePublicKey) -> str:
    secret = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "silo-1"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def battery(federation: Federation) -> dict[str, tuple[str, grpc.StatusCode, str]]:
    """Acceptance battery of issue 4: name -> (token the silo presents on Submit, status, message)."""
    now = int(time.time())
    key = federation.silo_key

    def silo(**changes: object) -> str:
        return sign(claims_for(SILO, Role.SILO, **changes), key)

    return {
        "alg none": (alg_none(claims_for(SILO, Role.SILO)), UNAUTHENTICATED, "'none' is refused"),
        "HS256 signed with the public key": (
            hs256_with_public_key(claims_for(SILO, Role.SILO), key.public_key()),
            UNAUTHENTICATED,
            "'HS256' is refused",
        ),
        "missing exp": (silo(exp=None), UNAUTHENTICATED, "lacks the required claim 'exp'"),
        "missing aud": (silo(aud=None), UNAUTHENTICATED, "lacks the required claim 'aud'"),
        "missing iss": (silo(iss=None), UNAUTHENTICATED, "lacks the required claim 'iss'"),
        "missing jti": (silo(jti=None), UNAUTHENTICATED, "lacks the required claim 'jti'"),
        "wrong audience": (silo(aud=OTHER_REGIONAL.uri), UNAUTHENTICATED, f"exactly {REGIONAL.uri}"),
        "expired beyond leeway": (
            silo(iat=now - 300, exp=now - LEEWAY_S - 30),
            UNAUTHENTICATED,
            "expired",
        ),
        "unknown kid": (sign(claims_for(SILO, Role.SILO), key, kid="silo-7"), UNAUTHENTICATED, "'silo-7'"),
        "subject is not the certificate identity": (
            sign(claims_for(OTHER_SILO, Role.SILO), key),
            UNAUTHENTICATED,
            f"does not match the client certificate identity {SILO}",
        ),
    }


# --- the battery ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "alg none",
        "HS256 signed with the public key",
        "missing exp",
        "missing aud",
        "missing iss",
        "missing jti",
        "wrong audience",
        "expired beyond leeway",
        "unknown kid",
        "subject is not the certificate identity",
    ],
)
def test_a_bad_token_is_refused_before_the_handler_runs(
    case: str, federation: Federation, silo_channel: grpc.Channel, service: Guarded
) -> None:
    token, code, message = battery(federation)[case]
    error = refusal(silo_channel, "Submit", token)
    assert error.code() == code
    assert message in error.details()
    assert token.split(".")[1] not in error.details()  # the token is never echoed
    assert service.calls == []


def test_a_replayed_token_is_refused(
    federation: Federation, silo_channel: grpc.Channel, service: Guarded
) -> None:
    token = sign(claims_for(SILO, Role.SILO), federation.silo_key)
    assert call(silo_channel, "Submit", token) == f"{SILO} as silo".encode()
    error = refusal(silo_channel, "Submit", token)
    assert error.code() == UNAUTHENTICATED
    assert "already used" in error.details()
    assert len(service.calls) == 1


def test_a_silo_token_on_an_operator_rpc_is_permission_denied(
    federation: Federation, silo_channel: grpc.Channel, service: Guarded
) -> None:
    error = refusal(silo_channel, "StartRound", sign(claims_for(SILO, Role.SILO), federation.silo_key))
    assert error.code() == PERMISSION_DENIED
    assert f"{SILO} acts as silo; /{SERVICE}/StartRound is for operator" in error.details()
    assert service.calls == []


def test_a_silo_cannot_claim_the_operator_role_even_with_an_operator_key(
    federation: Federation, silo_channel: grpc.Channel, service: Guarded
) -> None:
    token = sign(claims_for(SILO, Role.SILO, role="operator"), federation.operator_key, kid="operator-1")
    error = refusal(silo_channel, "StartRound", token)
    assert error.code() == PERMISSION_DENIED
    assert "cannot hold the operator role" in error.details()
    assert service.calls == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "carries no 'authorization: Bearer <token>' metadata"),
        ((("authorization", "Basic c2lsbzpzZWNyZXQ="),), "must read 'Bearer <token>'"),
        ((("authorization", "Bearer "),), "must read 'Bearer <token>'"),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "2 'authorization' entries"),
    ],
)
def test_a_call_without_one_bearer_token_is_unauthenticated(
    metadata: tuple[tuple[str, str], ...], message: str, silo_channel: grpc.Channel, service: Guarded
) -> None:
    error = refusal(silo_channel, "Submit", None, metadata=metadata)
    assert error.code() == UNAUTHENTICATED
    assert message in error.details()
    assert service.calls == []


def test_a_method_missing_from_the_policy_is_refused_to_everyone(
    federation: Federation, address: str, service: Guarded
) -> None:
    with open_channel(address, federation.operator_tls) as channel:
        token = sign(claims_for(OPERATOR, Role.OPERATOR), federation.operator_key, kid="operator-1")
        error = refusal(channel, "Unlisted", token)
    assert error.code() == PERMISSION_DENIED
    assert "is for no role" in error.details()
    assert service.calls == []


# --- what is accepted -----------------------------------------------------------------------------


def test_a_token_expired_within_the_leeway_is_accepted(
    federation: Federation, silo_channel: grpc.Channel
) -> None:
    now = int(time.time())
    token = sign(claims_for(SILO, Role.SILO, iat=now - 90, exp=now - 30), federation.silo_key)
    assert call(silo_channel, "Submit", token) == f"{SILO} as silo".encode()


def test_health_needs_no_token(silo_channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(silo_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def _token_channel(
    address: str, tls: TlsFiles, minter: TokenMinter, audience: str = REGIONAL.uri
) -> grpc.Channel:
    ca_cert, cert, key = tls.read()
    credentials = token_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca_cert, private_key=key, certificate_chain=cert),
        minter,
        audience,
    )
    return grpc.secure_channel(address, credentials)


def test_call_credentials_attach_a_fresh_token_to_every_call_of_every_kind(
    federation: Federation, address: str, service: Guarded
) -> None:
    silo = TokenMinter(federation.silo_key, kid="silo-1", identity=SILO, role=Role.SILO)
    with _token_channel(address, federation.silo_tls, silo) as channel:
        for _ in range(5):  # a token is good for one call: each call mints its own
            assert call(channel, "Submit", None) == f"{SILO} as silo".encode()
        upload = channel.stream_unary(f"/{SERVICE}/Upload")
        assert upload(iter([b"chunk-1 ", b"chunk-2"]), timeout=TIMEOUT_S) == (
            f"{SILO} as silo sent chunk-1 chunk-2".encode()
        )
    operator = TokenMinter(federation.operator_key, kid="operator-1", identity=OPERATOR, role=Role.OPERATOR)
    with _token_channel(address, federation.operator_tls, operator) as channel:
        assert call(channel, "StartRound", None) == f"{OPERATOR} as operator".encode()
        assert list(channel.unary_stream(f"/{SERVICE}/ReadAudit")(b"", timeout=TIMEOUT_S)) == [
            b"evidence 1",
            f"{OPERATOR} as operator".encode(),
        ]
    assert len(service.calls) == 8


def test_an_auditor_reads_evidence_but_cannot_operate(
    federation: Federation, address: str, service: Guarded
) -> None:
    auditor = TokenMinter(federation.auditor_key, kid="auditor-1", identity=OPERATOR, role=Role.AUDITOR)
    with _token_channel(address, federation.operator_tls, auditor) as channel:
        evidence = list(channel.unary_stream(f"/{SERVICE}/ReadAudit")(b"", timeout=TIMEOUT_S))
        assert evidence[-1] == f"{OPERATOR} as auditor".encode()
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, "StartRound", None)
    assert caught.value.code() == PERMISSION_DENIED
    assert service.calls == [f"{OPERATOR} as auditor"]


def test_a_token_minted_for_another_aggregator_is_refused(
    federation: Federation, address: str, service: Guarded
) -> None:
    silo = TokenMinter(federation.silo_key, kid="silo-1", identity=SILO, role=Role.SILO)
    with (
        _token_channel(address, federation.silo_tls, silo, audience=OTHER_REGIONAL.uri) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        call(channel, "Submit", None)
    assert caught.value.code() == UNAUTHENTICATED
    assert service.calls == []


def test_a_stolen_token_key_without_the_certificate_is_useless(
    federation: Federation, address: str, service: Guarded
) -> None:
    # hospital-b holds hospital-a's token key, but its own certificate.
    thief = TokenMinter(federation.silo_key, kid="silo-1", identity=SILO, role=Role.SILO)
    with (
        _token_channel(address, federation.other_silo_tls, thief) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        call(channel, "Submit", None)
    assert caught.value.code() == UNAUTHENTICATED
    assert f"identity {OTHER_SILO}" in caught.value.details()
    assert service.calls == []


# --- rotation -------------------------------------------------------------------------------------


def test_a_rotated_key_set_is_picked_up_without_a_restart(
    federation: Federation, silo_channel: grpc.Channel, service: Guarded
) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    error = refusal(silo_channel, "Submit", sign(claims_for(SILO, Role.SILO), new_key, kid="silo-2"))
    assert error.code() == UNAUTHENTICATED

    # The operator publishes the new key while the server runs ...
    install_public_key(federation.key_dir, Role.SILO, "silo-2", new_key.public_key())
    assert call(silo_channel, "Submit", sign(claims_for(SILO, Role.SILO), new_key, kid="silo-2"))
    assert call(silo_channel, "Submit", sign(claims_for(SILO, Role.SILO), federation.silo_key))

    # ... and retires the old one once the silo has switched.
    (federation.key_dir / "silo" / "silo-1.pem").unlink()
    error = refusal(silo_channel, "Submit", sign(claims_for(SILO, Role.SILO), federation.silo_key))
    assert error.code() == UNAUTHENTICATED
    assert "'silo-1' is not in this server's key set" in error.details()
    assert call(silo_channel, "Submit", sign(claims_for(SILO, Role.SILO), new_key, kid="silo-2"))
    assert len(service.calls) == 3


# --- pieces ---------------------------------------------------------------------------------------


def test_claims_are_only_available_inside_a_verified_call() -> None:
    with pytest.raises(Unauthenticated, match="no verified token"):
        current_claims()


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: MethodRoles({"Submit": frozenset({Role.SILO})}), "/package.Service/Method"),
        (lambda: MethodRoles({"/a.B/C": frozenset()}), "non-empty set of Role"),
        (lambda: MethodRoles({"/grpc.health.v1.Health/Check": frozenset({Role.SILO})}), "both public"),
        (lambda: token_call_credentials(TokenMinter.__new__(TokenMinter), "eu-1"), "token audience"),
    ],
)
def test_policies_and_credentials_that_cannot_work_are_config_errors(
    build: Callable[[], object], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        build()


def test_a_minter_that_fails_fails_the_call_without_sending_it(
    federation: Federation, address: str, service: Guarded
) -> None:
    class Broken:
        def mint(self, audience: str) -> str:
            raise RuntimeError("token key unreadable")

    ca_cert, cert, key = federation.silo_tls.read()
    credentials = token_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca_cert, private_key=key, certificate_chain=cert),
        Broken(),
        REGIONAL.uri,
    )
    with grpc.secure_channel(address, credentials) as channel, pytest.raises(grpc.RpcError) as caught:
        call(channel, "Submit", None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert service.calls == []


def test_a_callback_style_method_can_be_guarded_too(federation: Federation, service: Guarded) -> None:
    """gRPC's health Watch reports through callbacks; made role-restricted, it is guarded all the same."""
    watch = "/grpc.health.v1.Health/Watch"
    policy = MethodRoles({watch: frozenset({Role.OPERATOR})}, public=frozenset())
    request = health_pb2.HealthCheckRequest()
    with guarded_server(service, federation, policy) as running:
        for tls, token, code in [
            (federation.silo_tls, None, UNAUTHENTICATED),
            (federation.silo_tls, sign(claims_for(SILO, Role.SILO), federation.silo_key), PERMISSION_DENIED),
        ]:
            metadata = () if token is None else (("authorization", f"Bearer {token}"),)
            with open_channel(running, tls) as channel, pytest.raises(grpc.RpcError) as caught:
                next(health_pb2_grpc.HealthStub(channel).Watch(request, metadata=metadata, timeout=TIMEOUT_S))
            assert caught.value.code() == code
        token = sign(claims_for(OPERATOR, Role.OPERATOR), federation.operator_key, kid="operator-1")
        with open_channel(running, federation.operator_tls) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT_S
            )
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
            stream.cancel()


def test_a_policy_that_forgets_a_method_of_a_service_is_caught_at_start_up() -> None:
    service = regional_pb2.DESCRIPTOR.services_by_name["RegionalAggregator"]
    complete = MethodRoles.for_service(service.full_name, {m.name: [Role.SILO] for m in service.methods})
    complete.check_covers(service)
    partial = MethodRoles.for_service(service.full_name, {"RegisterSilo": [Role.SILO]})
    with pytest.raises(ConfigError, match=r"/jurisfed\.v1\.RegionalAggregator/SubmitUpdate"):
        partial.check_covers(service)


def test_the_bearer_scheme_is_case_insensitive(federation: Federation, silo_channel: grpc.Channel) -> None:
    token = sign(claims_for(SILO, Role.SILO), federation.silo_key)
    assert call(silo_channel, "Submit", None, metadata=(("authorization", f"bearer {token}"),))
