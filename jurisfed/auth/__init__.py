"""Identity and trust: the federation PKI and the identities its certificates name."""

from jurisfed.auth.identity import Identity, Tier, peer_identity
from jurisfed.auth.pki import TlsFiles, certificate_identity, create_ca, issue

__all__ = ["Identity", "Tier", "TlsFiles", "certificate_identity", "create_ca", "issue", "peer_identity"]
