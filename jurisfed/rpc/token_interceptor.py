"""Bearer tokens on every call: a server interceptor that verifies them, and client call credentials.

Server side, `TokenInterceptor` requires an ``authorization: Bearer <jwt>`` metadata entry on
every method that `MethodRoles` does not list as public, verifies it against the mTLS peer
of the call, checks the token's role against the method's allowed roles, and only then runs
the handler, which reads the verified claims with `current_claims()`. The checks run inside
the wrapped handler, where the real `ServicerContext` (and so the peer certificate) is
available; they raise `Unauthenticated` / `NotAllowed`, which `ErrorMappingInterceptor` (placed
before this interceptor) turns into UNAUTHENTICATED / PERMISSION_DENIED.

Client side, `token_call_credentials` mints a fresh token for every call. gRPC sends call
credentials over secure channels only, so a token never travels in plaintext.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from jurisfed.auth.identity import Identity, peer_identity
from jurisfed.auth.replay import ReplayCache
from jurisfed.auth.token_keys import KeySet
from jurisfed.auth.tokens import Role, TokenClaims, TokenVerifier
from jurisfed.errors import ConfigError, JurisfedError, NotAllowed, Unauthenticated
from jurisfed.rpc.call_guard import guard_handler

AUTHORIZATION = "authorization"
BEARER = "Bearer "

# Callable without a token (mTLS still applies): load balancers and `wait_until_serving`
# probe health, operators list services.
PUBLIC_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)

_CLAIMS: contextvars.ContextVar[TokenClaims | None] = contextvars.ContextVar(
    "jurisfed_token_claims", default=None
)


def current_claims() -> TokenClaims:
    """The verified token of the call this handler serves; `Unauthenticated` outside one."""
    claims = _CLAIMS.get()
    if claims is None:
        raise Unauthenticated("this call carries no verified token")
    return claims


class TokenVerification(Protocol):
    """Verifies a token presented by `peer`, consuming its ``jti`` (see `tokens.TokenVerifier`)."""

    def verify(self, token: str, peer: Identity) -> TokenClaims: ...


class TokenSource(Protocol):
    """Mints a fresh token for one call to `audience` (see `tokens.TokenMinter`)."""

    def mint(self, audience: str) -> str: ...


@dataclass(frozen=True)
class MethodRoles:
    """Which roles may call each method (``/package.Service/Method``); every other method is refused.

    Methods in `public` need no token. A method in neither is PERMISSION_DENIED (fail closed).
    """

    allowed: Mapping[str, frozenset[Role]]
    public: frozenset[str] = field(default=PUBLIC_METHODS)

    def __post_init__(self) -> None:
        for method, roles in self.allowed.items():
            if not (method.startswith("/") and method.count("/") == 2 and all(method.split("/")[1:])):
                raise ConfigError(f"method {method!r} must be written /package.Service/Method")
            if not roles or not all(isinstance(role, Role) for role in roles):
                raise ConfigError(f"method {method}: allowed roles must be a non-empty set of Role")
        both = sorted(self.public & self.allowed.keys())
        if both:
            raise ConfigError(f"methods both public and role-restricted: {both}")

    @classmethod
    def for_service(cls, service: str, roles_by_method: Mapping[str, Sequence[Role]]) -> MethodRoles:
        """Policy for one service, e.g. ``for_service("jurisfed.v1.RegionalAggregator", {...})``."""
        return cls({f"/{service}/{name}": frozenset(roles) for name, roles in roles_by_method.items()})

    def including(self, other: MethodRoles) -> MethodRoles:
        """One policy for a server hosting the services of both."""
        return MethodRoles({**self.allowed, **other.allowed}, self.public | other.public)

    def roles_for(self, method: str) -> frozenset[Role]:
        """The roles that may call `method`; empty when none may."""
        return self.allowed.get(method, frozenset())

    def check_covers(self, *services: ServiceDescriptor) -> None:
        """At start-up: `ConfigError` naming each method of `services` that nobody could call."""
        methods = [
            f"/{service.full_name}/{method.name}" for service in services for method in service.methods
        ]
        unlisted = [method for method in methods if method not in self.public and not self.roles_for(method)]
        if unlisted:
            raise ConfigError(f"no role may call {', '.join(unlisted)}: add them to the method policy")


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Requires a valid token whose role may call the method before any handler runs."""

    def __init__(self, verifier: TokenVerification, policy: MethodRoles) -> None:
        self._verifier = verifier
        self._policy = policy

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method in self._policy.public:
            return handler
        token = _bearer_token(handler_call_details.invocation_metadata)
        guard = _Guard(self._verifier, method, self._policy.roles_for(method), token)
        return guard_handler(handler, guard.admit)


@dataclass(frozen=True)
class _Guard:
    """The checks of one call, run with its real context before the handler."""

    verifier: TokenVerification
    method: str
    roles: frozenset[Role]
    token: str | JurisfedError  # the bearer token, or why the metadata holds none

    @contextlib.contextmanager
    def admit(self, context: grpc.ServicerContext) -> Iterator[TokenClaims]:
        """Authorize the call; its claims stay visible to the handler until it has finished."""
        claims = self._authorize(context)
        reset = _CLAIMS.set(claims)
        try:
            yield claims
        finally:
            _CLAIMS.reset(reset)

    def _authorize(self, context: grpc.ServicerContext) -> TokenClaims:
        if isinstance(self.token, JurisfedError):
            raise self.token
        claims = self.verifier.verify(self.token, peer_identity(context))
        if claims.role not in self.roles:
            allowed = ", ".join(sorted(role.value for role in self.roles)) or "no role"
            raise NotAllowed(f"{claims.subject} acts as {claims.role.value}; {self.method} is for {allowed}")
        return claims


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | JurisfedError:
    values = [value for key, value in metadata or () if key == AUTHORIZATION]
    if not values:
        return Unauthenticated(f"the call carries no '{AUTHORIZATION}: Bearer <token>' metadata")
    if len(values) > 1:
        return Unauthenticated(f"the call carries {len(values)} '{AUTHORIZATION}' entries; send one")
    value = values[0]
    # The scheme name is case-insensitive (RFC 6750 §2.1, RFC 9110 §11.1).
    if (
        not isinstance(value, str)
        or value[: len(BEARER)].lower() != BEARER.lower()
        or not value[len(BEARER) :].strip()
    ):
        return Unauthenticated(f"the '{AUTHORIZATION}' metadata must read 'Bearer <token>'")
    return value[len(BEARER) :].strip()


# --- client side ----------------------------------------------------------------------------------


class _TokenPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, source: TokenSource, audience: str) -> None:
        self._source = source
        self._audience = audience

    def __call__(
        self,
        context: grpc.AuthMetadataContext,
        callback: Callable[[tuple[tuple[str, str], ...], Exception | None], None],
    ) -> None:
        try:
            token = self._source.mint(self._audience)
        except Exception as error:  # gRPC fails the call with UNAVAILABLE and this error's text
            callback((), error)
            return
        callback(((AUTHORIZATION, BEARER + token),), None)


def token_call_credentials(source: TokenSource, audience: str) -> grpc.CallCredentials:
    """Call credentials that attach a fresh token for `audience` (the server's identity URI)."""
    try:
        Identity.parse(audience)
    except Unauthenticated as error:
        raise ConfigError(f"token audience: {error}") from None
    return grpc.metadata_call_credentials(_TokenPlugin(source, audience), name="jurisfed-token")


def token_channel_credentials(
    tls: grpc.ChannelCredentials, source: TokenSource, audience: str
) -> grpc.ChannelCredentials:
    """`tls` (this node's mTLS credentials) plus a fresh token on every call."""
    return grpc.composite_channel_credentials(tls, token_call_credentials(source, audience))


def token_interceptor(
    server: Identity, key_set: Path, roles: MethodRoles, *services: ServiceDescriptor
) -> TokenInterceptor:
    """The interceptor a tier serves with: tokens addressed to `server`, signed by a key in
    `key_set` (re-read on change), each `jti` accepted once, roles as `roles` says.

    ConfigError at start-up when the key set cannot be read or a method of `services` is
    callable by no role.
    """
    roles.check_covers(*services)
    verifier = TokenVerifier(audience=server.uri, keys=KeySet(key_set), replay=ReplayCache())
    return TokenInterceptor(verifier, roles)
