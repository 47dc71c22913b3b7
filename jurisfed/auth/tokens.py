"""Per-call bearer tokens: short-lived ES256 JWTs that a caller mints for one call to one aggregator.

A token is a client assertion in the manner of RFC 7523: the caller issues it about itself
(``iss`` = ``sub`` = its certificate identity), for exactly one receiver (``aud`` = the
receiving aggregator's identity URI), for one call (a random ``jti`` the receiver remembers
until the token has expired), for a short time (``exp`` - ``iat`` at most a few minutes). It
names the role the caller acts in (silo, regional, operator, auditor) and is signed with a
token key whose public half the receiver trusts for that role (see `token_keys`).

What the receiver checks, in order, failing closed with `Unauthenticated` (or `NotAllowed`
where the caller is known but lacks the privilege): ES256 and nothing else; a ``kid`` the
key set trusts; the signature; every required claim present; audience, expiry and issue time
within the leeway; issuer = subject = the mTLS peer; jurisdiction and tier equal to the
subject's; a role the key and the subject's tier may hold; a ``jti`` never seen before.
Error messages name the problem and never echo the token.
"""

from __future__ import annotations

import enum
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.replay import ReplayCache
from jurisfed.config import setting
from jurisfed.errors import ConfigError, NotAllowed, Unauthenticated

# One algorithm family, hard-coded: never taken from the token (RFC 8725 §2.1, §3.1).
ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "jurisdiction", "tier", "role")
MAX_LEEWAY_S = 60.0
DEFAULT_LEEWAY_S = 30.0
DEFAULT_LIFETIME_S = 60
DEFAULT_MAX_LIFETIME_S = 300
# Far above what a minted token needs (~700 characters); bounds parsing work and log lines.
MAX_TOKEN_CHARS = 4096
MAX_JTI_CHARS = 128
_MAX_SHOWN_CHARS = 64

# Key ids: printable, file-name safe (a PEM key set names its files after them).
KID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Role(enum.Enum):
    """What a caller may do. Operators start, abort and roll back rounds; auditors read evidence."""

    SILO = "silo"
    REGIONAL = "regional"
    OPERATOR = "operator"
    AUDITOR = "auditor"


# The certificate tier a caller must have to hold each role: a silo certificate can never
# carry an operator token, whatever key signed it.
ROLE_TIERS: Mapping[Role, Tier] = {
    Role.SILO: Tier.SILO,
    Role.REGIONAL: Tier.REGIONAL,
    Role.OPERATOR: Tier.OPERATOR,
    Role.AUDITOR: Tier.OPERATOR,
}


@dataclass(frozen=True)
class TrustedKey:
    """A public key the receiver accepts token signatures from, and the roles it may sign for."""

    kid: str
    public_key: ec.EllipticCurvePublicKey
    roles: frozenset[Role]


class KeyLookup(Protocol):
    """Where a verifier finds the key named by a token's ``kid`` (see `token_keys.KeySet`)."""

    def get(self, kid: str) -> TrustedKey | None: ...


@dataclass(frozen=True)
class TokenClaims:
    """A verified token: who called (also its issuer), in which role, for whom, until when."""

    subject: Identity
    role: Role
    audience: str
    jti: str
    issued_at: int
    expires_at: int
    kid: str


class TokenMinter:
    """Mints this node's tokens: one per call, for one audience, valid for `lifetime_s`.

    Thread-safe (it holds no mutable state), so one minter serves every call of a channel.
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        kid: str,
        identity: Identity,
        role: Role,
        lifetime_s: int = DEFAULT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"token key must be on curve P-256 for {ALGORITHM}, not {key.curve.name}")
        if not KID_PATTERN.fullmatch(kid):
            raise ConfigError(f"token key id {kid!r} must match {KID_PATTERN.pattern}")
        if ROLE_TIERS[role] is not identity.tier:
            raise ConfigError(f"{identity} cannot hold the {role.value} role (it is a {identity.tier.value})")
        if not 1 <= lifetime_s <= DEFAULT_MAX_LIFETIME_S:
            raise ConfigError(f"token lifetime must be 1-{DEFAULT_MAX_LIFETIME_S} s, not {lifetime_s}")
        self._key = key
        self._kid = kid
        self._identity = identity
        self._role = role
        self._lifetime_s = lifetime_s
        self._clock = clock

    @classmethod
    def from_key_file(
        cls, path: Path, *, kid: str, identity: Identity, role: Role, lifetime_s: int = DEFAULT_LIFETIME_S
    ) -> TokenMinter:
        """A minter signing with the P-256 private key in PEM file `path`."""
        return cls(load_token_key(path), kid=kid, identity=identity, role=role, lifetime_s=lifetime_s)

    @property
    def identity(self) -> Identity:
        return self._identity

    def mint(self, audience: str) -> str:
        """A fresh token for one call to the node whose identity URI is `audience`."""
        issued_at = int(self._clock())
        claims = {
            "iss": self._identity.uri,
            "sub": self._identity.uri,
            "aud": audience,
            "iat": issued_at,
            "exp": issued_at + self._lifetime_s,
            "jti": secrets.token_urlsafe(18),
            "jurisdiction": self._identity.jurisdiction,
            "tier": self._identity.tier.value,
            "role": self._role.value,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})


def load_token_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC private key in PEM file `path`; ConfigError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise ConfigError(f"token key {path} cannot be read: {error.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"token key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"token key {path} is not an EC private key")
    return key


class TokenVerifier:
    """Verifies tokens presented to the node whose identity URI is `audience`.

    `verify` records each accepted ``jti`` in `replay`, so a token works for one call only.
    """

    def __init__(
        self,
        *,
        audience: str,
        keys: KeyLookup,
        replay: ReplayCache,
        leeway_s: float = DEFAULT_LEEWAY_S,
        max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S,
    ) -> None:
        if not 0 <= leeway_s <= MAX_LEEWAY_S:
            raise ConfigError(f"token leeway must be 0-{MAX_LEEWAY_S:g} s, not {leeway_s}")
        if max_lifetime_s < 1:
            raise ConfigError(f"maximum token lifetime must be at least 1 s, not {max_lifetime_s}")
        try:
            Identity.parse(audience)  # the audience is an aggregator's identity URI
        except Unauthenticated as error:
            raise ConfigError(f"token audience: {error}") from None
        self._audience = audience
        self._keys = keys
        self._replay = replay
        self._leeway_s = leeway_s
        self._max_lifetime_s = max_lifetime_s

    @property
    def audience(self) -> str:
        return self._audience

    def verify(self, token: str, peer: Identity) -> TokenClaims:
        """The claims of `token` presented by `peer` (its mTLS identity), or an error naming the fault."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"token is longer than {MAX_TOKEN_CHARS} characters")
        key = self._signing_key(token)
        payload = self._decode(token, key)
        claims = self._claims(payload, key, peer)
        if not self._replay.add(
            (claims.subject.uri, claims.jti), expires_at=claims.expires_at + self._leeway_s
        ):
            raise Unauthenticated("token was already used (its jti was seen before); mint one per call")
        return claims

    def _signing_key(self, token: str) -> TrustedKey:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            if str(error).startswith("Unsupported critical extension"):
                raise Unauthenticated(
                    "token header lists critical extensions (crit); none are supported"
                ) from None
            raise Unauthenticated(f"token is not a well-formed JWT ({_show(str(error))})") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise Unauthenticated(f"token algorithm {_show(alg)} is refused; only {ALGORITHM} is accepted")
        if "crit" in header:
            raise Unauthenticated("token header lists critical extensions (crit); none are supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token header has no key id (kid)")
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(f"token key id {_show(kid)} is not in this server's key set")
        return key

    def _decode(self, token: str, key: TrustedKey) -> dict[str, object]:
        try:
            payload: dict[str, object] = jwt.decode(
                token,
                key.public_key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f"token lacks the required claim {error.claim!r}") from None
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                f"token has expired (beyond the {self._leeway_s:g} s clock leeway)"
            ) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                f"token is not valid yet (issued in the future, beyond the {self._leeway_s:g} s leeway)"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"token audience is not this server; it must be exactly {self._audience}"
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(f"token signature does not verify with key {key.kid!r}") from None
        except jwt.InvalidTokenError as error:
            # pyjwt's own messages describe the fault without quoting the token.
            raise Unauthenticated(f"token is invalid: {str(error)[:200]}") from None
        return payload

    def _claims(self, payload: Mapping[str, object], key: TrustedKey, peer: Identity) -> TokenClaims:
        sub, iss = payload["sub"], payload["iss"]
        if not isinstance(sub, str) or len(sub) > 256:
            raise Unauthenticated("token subject (sub) is not an identity URI")
        subject = Identity.parse(sub)
        if iss != sub:
            raise Unauthenticated("token issuer (iss) must be its subject (sub): callers mint their own")
        if subject != peer:
            raise Unauthenticated(
                f"token subject {subject} does not match the client certificate identity {peer}"
            )
        if payload["jurisdiction"] != subject.jurisdiction or payload["tier"] != subject.tier.value:
            raise Unauthenticated(f"token jurisdiction and tier claims do not match its subject {subject}")
        role_name = payload["role"]
        try:
            role = Role(role_name)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise Unauthenticated(f"token role {_show(role_name)} is unknown (known: {known})") from None
        if ROLE_TIERS[role] is not subject.tier:
            raise NotAllowed(f"{subject} cannot hold the {role.value} role (it is a {subject.tier.value})")
        if role not in key.roles:
            raise NotAllowed(f"token key {key.kid!r} is not trusted to sign for the {role.value} role")
        jti = payload["jti"]
        if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_CHARS:
            raise Unauthenticated(f"token id (jti) must be a string of 1-{MAX_JTI_CHARS} characters")
        issued_at, expires_at = _whole_seconds(payload, "iat"), _whole_seconds(payload, "exp")
        if not 0 < expires_at - issued_at <= self._max_lifetime_s:
            raise Unauthenticated(
                f"token lifetime (exp - iat) is {expires_at - issued_at} s; "
                f"this server accepts 1-{self._max_lifetime_s} s"
            )
        # strict_aud has already required a single string equal to ours.
        return TokenClaims(subject, role, self._audience, jti, issued_at, expires_at, key.kid)


def _whole_seconds(payload: Mapping[str, object], claim: str) -> int:
    value = payload[claim]
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unauthenticated(f"token claim {claim!r} must be a whole number of seconds since the epoch")
    return value


def _show(value: object) -> str:
    """A header or claim value as an error may quote it: short, and printable."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


@dataclass(frozen=True)
class TokenKeyFile:
    """A node's token key, as its configuration names it (`jurisfed pki token-key` makes one)."""

    key: Path = setting("this node's P-256 token key (PEM, 0600); it signs a fresh JWT for every call")
    kid: str = setting(
        "the key id the receivers' key sets hold its public half under (token-keys/ROLE/KID.pem)"
    )

    def minter(self, identity: Identity, role: Role) -> TokenMinter:
        return TokenMinter.from_key_file(self.key, kid=self.kid, identity=identity, role=role)
