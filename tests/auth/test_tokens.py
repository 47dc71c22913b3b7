"""Tokens: what a minter produces and every way a verifier refuses a token, without echoing it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.replay import ReplayCache
from jurisfed.auth.token_keys import KeySet, install_public_key
from jurisfed.auth.tokens import (
    MAX_TOKEN_CHARS,
    REQUIRED_CLAIMS,
    Role,
    TokenMinter,
    TokenVerifier,
)
from jurisfed.errors import ConfigError, JurisfedError, NotAllowed, Unauthenticated

REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
OTHER_REGIONAL = Identity("EU", Tier.REGIONAL, "eu-2")
SILO = Identity("EU", Tier.SILO, "hospital-a")
OTHER_SILO = Identity("EU", Tier.SILO, "hospital-b")
OPERATOR = Identity("EU", Tier.OPERATOR, "ml-team")
LEEWAY_S = 60


class Keys:
    """Token keys of the test federation and the key set a regional trusts them through."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.silo = ec.generate_private_key(ec.SECP256R1())
        self.operator = ec.generate_private_key(ec.SECP256R1())
        self.auditor = ec.generate_private_key(ec.SECP256R1())
        self.untrusted = ec.generate_private_key(ec.SECP256R1())
        install_public_key(directory, Role.SILO, "silo-1", self.silo.public_key())
        install_public_key(directory, Role.OPERATOR, "operator-1", self.operator.public_key())
        install_public_key(directory, Role.AUDITOR, "auditor-1", self.auditor.public_key())
        self.key_set = KeySet(directory, check_interval_s=0)

    def verifier(self, **settings: int) -> TokenVerifier:
        return TokenVerifier(
            audience=REGIONAL.uri, keys=self.key_set, replay=ReplayCache(), leeway_s=LEEWAY_S, **settings
        )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "token-keys")


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


def sign(
    claims: dict[str, object], key: ec.EllipticCurvePrivateKey, kid: str = "silo-1", **header: object
) -> str:
    """An ES256 JWS over `claims` as given (jwt.encode would refuse some malformed claims)."""
    return jwt.PyJWS().encode(json.dumps(claims).encode(), key, "ES256", headers={"kid": kid, **header})


def silo_token(keys: Keys, **changes: object) -> str:
    return sign(claims_for(SILO, Role.SILO, **changes), keys.silo)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, object], kid: str = "silo-1") -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, object], public_key: ec.EllipticCurvePublicKey) -> str:
    """The algorithm-confusion attack: HMAC keyed with the (public) PEM the server trusts."""
    secret = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "silo-1"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


# --- what is accepted -----------------------------------------------------------------------------


def test_a_minted_token_verifies_and_names_its_caller(keys: Keys) -> None:
    minter = TokenMinter(keys.silo, kid="silo-1", identity=SILO, role=Role.SILO)
    claims = keys.verifier().verify(minter.mint(REGIONAL.uri), SILO)
    assert claims.subject == SILO
    assert claims.role is Role.SILO
    assert claims.audience == REGIONAL.uri
    assert claims.kid == "silo-1"
    assert claims.expires_at - claims.issued_at == 60


def test_every_minted_token_is_fresh(keys: Keys) -> None:
    minter = TokenMinter(keys.silo, kid="silo-1", identity=SILO, role=Role.SILO)
    verifier = keys.verifier()
    for _ in range(5):
        verifier.verify(minter.mint(REGIONAL.uri), SILO)


def test_a_minted_token_carries_every_required_claim_and_its_kid(keys: Keys) -> None:
    token = TokenMinter(keys.operator, kid="operator-1", identity=OPERATOR, role=Role.OPERATOR).mint(
        REGIONAL.uri
    )
    assert jwt.get_unverified_header(token)["kid"] == "operator-1"
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(REQUIRED_CLAIMS) <= payload.keys()
    assert payload["iss"] == payload["sub"] == OPERATOR.uri


@pytest.mark.parametrize("seconds_ago", [1, 30, LEEWAY_S - 5])
def test_a_token_expired_within_the_leeway_is_accepted(keys: Keys, seconds_ago: int) -> None:
    now = int(time.time())
    token = silo_token(keys, iat=now - 60 - seconds_ago, exp=now - seconds_ago)
    assert keys.verifier().verify(token, SILO).subject == SILO


def test_a_token_issued_slightly_in_the_future_is_accepted(keys: Keys) -> None:
    now = int(time.time())
    keys.verifier().verify(silo_token(keys, iat=now + 30, exp=now + 90), SILO)


def test_an_auditor_key_signs_auditor_tokens(keys: Keys) -> None:
    token = sign(claims_for(OPERATOR, Role.AUDITOR), keys.auditor, kid="auditor-1")
    assert keys.verifier().verify(token, OPERATOR).role is Role.AUDITOR


# --- what is refused ------------------------------------------------------------------------------


def _battery(keys: Keys) -> dict[str, tuple[str, type[JurisfedError], str]]:
    """name -> (token presented by SILO, error, what the message says)."""
    now = int(time.time())
    silo_claims = claims_for(SILO, Role.SILO)
    battery: dict[str, tuple[str, type[JurisfedError], str]] = {
        "alg none": (unsigned_token(silo_claims), Unauthenticated, "algorithm 'none' is refused"),
        "HS256 signed with the public key": (
            hs256_with_public_key(silo_claims, keys.silo.public_key()),
            Unauthenticated,
            "algorithm 'HS256' is refused",
        ),
        "ES384": (
            jwt.encode(
                silo_claims, ec.generate_private_key(ec.SECP384R1()), "ES384", headers={"kid": "silo-1"}
            ),
            Unauthenticated,
            "only ES256",
        ),
        "wrong audience": (silo_token(keys, aud=OTHER_REGIONAL.uri), Unauthenticated, "audience"),
        "audience list": (
            silo_token(keys, aud=[REGIONAL.uri, OTHER_REGIONAL.uri]),
            Unauthenticated,
            "audience",
        ),
        "expired beyond leeway": (
            silo_token(keys, iat=now - 200, exp=now - LEEWAY_S - 10),
            Unauthenticated,
            "expired",
        ),
        "issued in the future": (
            silo_token(keys, iat=now + LEEWAY_S + 30, exp=now + LEEWAY_S + 90),
            Unauthenticated,
            "not valid yet",
        ),
        "unknown kid": (
            sign(silo_claims, keys.silo, kid="silo-9"),
            Unauthenticated,
            "key id 'silo-9' is not in this server's key set",
        ),
        "no kid": (jwt.encode(silo_claims, keys.silo, "ES256"), Unauthenticated, "no key id"),
        "signed by an untrusted key under a trusted kid": (
            sign(silo_claims, keys.untrusted),
            Unauthenticated,
            "signature does not verify",
        ),
        "crit header": (sign(silo_claims, keys.silo, crit=["exp"]), Unauthenticated, "critical"),
        "subject is another silo": (
            sign(claims_for(OTHER_SILO, Role.SILO), keys.silo),
            Unauthenticated,
            f"subject {OTHER_SILO} does not match the client certificate identity {SILO}",
        ),
        "issuer is not the subject": (silo_token(keys, iss=REGIONAL.uri), Unauthenticated, "issuer"),
        "jurisdiction differs from subject": (
            silo_token(keys, jurisdiction="US"),
            Unauthenticated,
            "jurisdiction and tier",
        ),
        "tier differs from subject": (
            silo_token(keys, tier="regional"),
            Unauthenticated,
            "jurisdiction and tier",
        ),
        "unknown role": (silo_token(keys, role="admin"), Unauthenticated, "role 'admin' is unknown"),
        "silo claiming the operator role": (
            sign(claims_for(SILO, Role.SILO, role="operator"), keys.operator, kid="operator-1"),
            NotAllowed,
            "cannot hold the operator role",
        ),
        "auditor key minting an operator token": (
            sign(claims_for(OPERATOR, Role.OPERATOR), keys.auditor, kid="auditor-1"),
            NotAllowed,
            "not trusted to sign for the operator role",
        ),
        "too long lived": (silo_token(keys, exp=now + 3600), Unauthenticated, "lifetime"),
        "exp before iat": (silo_token(keys, iat=now, exp=now - 1), Unauthenticated, "lifetime"),
        "exp as text": (silo_token(keys, exp=str(now + 60)), Unauthenticated, "whole number"),
        "empty jti": (silo_token(keys, jti=""), Unauthenticated, "jti"),
        "jti not a string": (silo_token(keys, jti=7), Unauthenticated, "JWT ID must be a string"),
        "subject not an identity": (
            silo_token(keys, sub="alice", iss="alice"),
            Unauthenticated,
            "not of the form",
        ),
        "tampered payload": (_tampered(silo_token(keys)), Unauthenticated, "signature does not verify"),
        "garbage": ("not.a.jwt", Unauthenticated, "not a well-formed JWT"),
        "empty": ("", Unauthenticated, "not a well-formed JWT"),
        "too long": ("a" * (MAX_TOKEN_CHARS + 1), Unauthenticated, "longer than"),
    }
    for claim in REQUIRED_CLAIMS:
        battery[f"missing {claim}"] = (silo_token(keys, **{claim: None}), Unauthenticated, repr(claim))
    return battery


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "regional"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


BATTERY = [
    "alg none",
    "HS256 signed with the public key",
    "ES384",
    "wrong audience",
    "audience list",
    "expired beyond leeway",
    "issued in the future",
    "unknown kid",
    "no kid",
    "signed by an untrusted key under a trusted kid",
    "crit header",
    "subject is another silo",
    "issuer is not the subject",
    "jurisdiction differs from subject",
    "tier differs from subject",
    "unknown role",
    "silo claiming the operator role",
    "auditor key minting an operator token",
    "too long lived",
    "exp before iat",
    "exp as text",
    "empty jti",
    "jti not a string",
    "subject not an identity",
    "tampered payload",
    "garbage",
    "empty",
    "too long",
    *(f"missing {claim}" for claim in REQUIRED_CLAIMS),
]


@pytest.mark.parametrize("case", BATTERY)
def test_the_verifier_refuses_a_bad_token_naming_the_fault_without_echoing_it(keys: Keys, case: str) -> None:
    token, error, message = _battery(keys)[case]
    peer = OPERATOR if "auditor key" in case else SILO
    with pytest.raises(error) as caught:
        keys.verifier().verify(token, peer)
    assert message in str(caught.value)
    if token:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in str(caught.value)


def test_the_battery_list_names_every_case(keys: Keys) -> None:
    assert set(_battery(keys)) == set(BATTERY)


def test_a_token_works_once(keys: Keys) -> None:
    verifier = keys.verifier()
    token = silo_token(keys)
    verifier.verify(token, SILO)
    with pytest.raises(Unauthenticated, match="already used"):
        verifier.verify(token, SILO)


def test_a_refused_token_does_not_use_up_its_jti(keys: Keys) -> None:
    verifier = keys.verifier()
    token = silo_token(keys)
    with pytest.raises(Unauthenticated, match="does not match the client certificate"):
        verifier.verify(token, OTHER_SILO)
    verifier.verify(token, SILO)


def test_a_removed_key_is_refused_at_once(keys: Keys) -> None:
    verifier = keys.verifier()
    verifier.verify(silo_token(keys), SILO)
    (keys.directory / "silo" / "silo-1.pem").unlink()
    with pytest.raises(Unauthenticated, match="not in this server's key set"):
        verifier.verify(silo_token(keys), SILO)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    token=st.text(max_size=300)
    | st.from_regex(r"[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,40}")
)
def test_arbitrary_text_is_refused_as_unauthenticated(keys: Keys, token: str) -> None:
    with pytest.raises(Unauthenticated):
        keys.verifier().verify(token, SILO)


_CLAIM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.lists(st.text(max_size=10), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(st.sampled_from([*REQUIRED_CLAIMS, "nbf", "extra"]), _CLAIM_VALUES, max_size=4)
)
def test_signed_tokens_with_arbitrary_claims_are_accepted_or_refused_cleanly(
    keys: Keys, changes: dict[str, object]
) -> None:
    claims = claims_for(SILO, Role.SILO)
    claims.update(changes)
    token = sign(claims, keys.silo)
    try:
        verified = keys.verifier().verify(token, SILO)
    except (Unauthenticated, NotAllowed):
        return
    # Accepted only when what matters is exactly right.
    assert verified.subject == SILO
    assert verified.role is Role.SILO
    assert verified.audience == REGIONAL.uri


# --- configuration --------------------------------------------------------------------------------


def test_minter_settings_that_cannot_work_are_config_errors(keys: Keys) -> None:
    with pytest.raises(ConfigError, match="cannot hold the operator role"):
        TokenMinter(keys.silo, kid="silo-1", identity=SILO, role=Role.OPERATOR)
    with pytest.raises(ConfigError, match="key id"):
        TokenMinter(keys.silo, kid="bad kid", identity=SILO, role=Role.SILO)
    with pytest.raises(ConfigError, match="lifetime"):
        TokenMinter(keys.silo, kid="silo-1", identity=SILO, role=Role.SILO, lifetime_s=3600)
    with pytest.raises(ConfigError, match="P-256"):
        TokenMinter(ec.generate_private_key(ec.SECP384R1()), kid="k", identity=SILO, role=Role.SILO)


def test_a_minter_reads_its_key_file(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    path.write_bytes(
        keys.silo.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    minter = TokenMinter.from_key_file(path, kid="silo-1", identity=SILO, role=Role.SILO)
    keys.verifier().verify(minter.mint(REGIONAL.uri), SILO)
    with pytest.raises(ConfigError, match="cannot be read"):
        TokenMinter.from_key_file(tmp_path / "absent.key", kid="silo-1", identity=SILO, role=Role.SILO)
    (tmp_path / "public.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        TokenMinter.from_key_file(tmp_path / "public.pem", kid="silo-1", identity=SILO, role=Role.SILO)


def test_verifier_settings_that_cannot_work_are_config_errors(keys: Keys) -> None:
    with pytest.raises(ConfigError, match="leeway"):
        TokenVerifier(audience=REGIONAL.uri, keys=keys.key_set, replay=ReplayCache(), leeway_s=61)
    with pytest.raises(ConfigError, match="lifetime"):
        TokenVerifier(audience=REGIONAL.uri, keys=keys.key_set, replay=ReplayCache(), max_lifetime_s=0)
    with pytest.raises(ConfigError, match="not of the form"):
        TokenVerifier(audience="eu-1", keys=keys.key_set, replay=ReplayCache())
