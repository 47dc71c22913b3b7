"""Who a peer is: jurisdiction, tier and node, named by the URI SAN of its certificate.

Every certificate the federation CA issues carries exactly one URI such as
``jurisfed://EU/silo/hospital-a``. mTLS proves the peer holds the key for a certificate that
chains to the federation CA; this module turns that certificate into an `Identity` and
refuses anything that does not name one unambiguously.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

import grpc
from cryptography import x509

from jurisfed.errors import Unauthenticated

SCHEME = "jurisfed"

# The key under which gRPC puts the verified peer certificate (PEM) in `auth_context()`.
PEER_CERT_KEY = "x509_pem_cert"

_JURISDICTION = r"[A-Z0-9]{2,16}"
# A DNS label: lowercase letters, digits and hyphens, 1-63 long, no hyphen at either end.
_NODE = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_URI = re.compile(rf"{SCHEME}://(?P<jurisdiction>[^/]*)/(?P<tier>[^/]*)/(?P<node>[^/]*)")


# The jurisdiction the global aggregator's certificate names: it belongs to no member.
GLOBAL_JURISDICTION = "GLOBAL"


def check_jurisdiction(name: str) -> None:
    """ValueError unless `name` is spelt as a jurisdiction: 2-16 uppercase letters or digits."""
    if not re.fullmatch(_JURISDICTION, name):
        raise ValueError(f"jurisdiction {name!r} must be 2-16 uppercase letters or digits (e.g. EU)")


class Tier(enum.Enum):
    """The role a node plays in the federation."""

    SILO = "silo"
    REGIONAL = "regional"
    GLOBAL = "global"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Identity:
    """A node of the federation, e.g. ``jurisfed://EU/silo/hospital-a``."""

    jurisdiction: str
    tier: Tier
    node: str

    def __post_init__(self) -> None:
        if not isinstance(self.tier, Tier):
            raise TypeError(f"tier must be a Tier, not {self.tier!r}")
        check_jurisdiction(self.jurisdiction)
        if not re.fullmatch(_NODE, self.node):
            raise ValueError(
                f"node {self.node!r} must be 1-63 lowercase letters, digits or hyphens, "
                "starting and ending with a letter or digit"
            )

    @property
    def uri(self) -> str:
        return f"{SCHEME}://{self.jurisdiction}/{self.tier.value}/{self.node}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Parse ``jurisfed://JURISDICTION/tier/node``; anything else raises `Unauthenticated`."""
        match = _URI.fullmatch(uri)
        if match is None:
            raise Unauthenticated(f"identity {uri!r} is not of the form {SCHEME}://JURISDICTION/tier/node")
        jurisdiction, tier_name, node = match.group("jurisdiction", "tier", "node")
        if not re.fullmatch(_JURISDICTION, jurisdiction):
            raise Unauthenticated(
                f"identity {uri!r}: jurisdiction {jurisdiction!r} must be 2-16 uppercase letters or digits"
            )
        try:
            tier = Tier(tier_name)
        except ValueError:
            known = ", ".join(t.value for t in Tier)
            raise Unauthenticated(f"identity {uri!r}: unknown tier {tier_name!r} (known: {known})") from None
        if not re.fullmatch(_NODE, node):
            raise Unauthenticated(
                f"identity {uri!r}: node {node!r} must be 1-63 lowercase letters, digits or hyphens, "
                "starting and ending with a letter or digit"
            )
        return cls(jurisdiction=jurisdiction, tier=tier, node=node)


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """The identity named by the one ``jurisfed://`` URI SAN of `cert`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Unauthenticated("peer certificate has no subject alternative names") from None
    uris = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.lower().startswith(f"{SCHEME}:")
    ]
    if len(uris) != 1:
        raise Unauthenticated(f"peer certificate must name exactly one {SCHEME}:// URI, it names {len(uris)}")
    return Identity.parse(uris[0])


def peer_identity(context: grpc.ServicerContext) -> Identity:
    """The identity of the peer of this call, from its mTLS client certificate.

    The TLS handshake has already verified the chain against the federation CA; this reads
    the URI SAN and fails with `Unauthenticated` when there is no single valid one.
    """
    pems = context.auth_context().get(PEER_CERT_KEY, [])
    if len(pems) != 1:
        raise Unauthenticated("the call carries no client certificate")
    return _identity_from_pem(bytes(pems[0]))


@functools.lru_cache(maxsize=4096)
def _identity_from_pem(pem: bytes) -> Identity:
    """Parsed once per certificate: a peer makes many calls with the same one."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("peer certificate cannot be parsed") from None
    return identity_from_certificate(cert)
