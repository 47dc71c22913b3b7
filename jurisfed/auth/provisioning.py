"""Provisioning a whole federation in one place: what `jurisfed demo` and the tests do.

In production each node makes its own keys (`jurisfed pki request`, `jurisfed pki token-key`)
and the federation CA only signs; this class plays every role at once on one machine: the CA
and its revocation list, each node's certificate and token key, and each aggregator's key set
of the callers it trusts.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from jurisfed.audit.keys import create_signing_key, public_path
from jurisfed.auth.identity import Identity
from jurisfed.auth.pki import TlsFiles, issue
from jurisfed.auth.revocation import publish_crl
from jurisfed.auth.token_keys import generate_token_key, install_public_key
from jurisfed.auth.tokens import Role, TokenKeyFile, load_token_key


class Provisioner:
    def __init__(self, ca_dir: Path, directory: Path) -> None:
        """Issue from the CA in `ca_dir`; write every node's files under `directory`."""
        self.ca = ca_dir
        self.directory = directory
        self.crl, _ = publish_crl(ca_dir)
        self._issued: dict[Identity, TlsFiles] = {}
        self._token_keys: dict[Identity, ec.EllipticCurvePublicKey] = {}

    def tls(self, identity: Identity) -> TlsFiles:
        """The node's certificate and key (issued once)."""
        if identity not in self._issued:
            self._issued[identity] = issue(self.ca, identity, self._dir(identity))
        return self._issued[identity]

    def token(self, identity: Identity) -> TokenKeyFile:
        """The node's token key (made once; its key id is the node name)."""
        key = self._dir(identity) / "token" / f"{identity.node}.key"
        if identity not in self._token_keys:
            private = load_token_key(key) if key.exists() else generate_token_key(key)
            self._token_keys[identity] = private.public_key()
        return TokenKeyFile(key, identity.node)

    def audit_key(self, identity: Identity) -> Path:
        """The aggregator's audit checkpoint key (made once); its public half is PATH.pub."""
        return self._signing_key(identity, "audit")

    def contract_key(self, identity: Identity) -> Path:
        """The global's round-contract signing key (made once); its public half is PATH.pub."""
        return self._signing_key(identity, "contract")

    def _signing_key(self, identity: Identity, purpose: str) -> Path:
        path = self._dir(identity) / purpose / f"{purpose}.key"
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            create_signing_key(path)
        return path

    def witness_entry(self, identity: Identity) -> str:
        """`identity` pinned with its audit key, as a `witness_peers` entry."""
        return f"{identity.uri}={public_path(self.audit_key(identity))}"

    def key_set(self, aggregator: Identity, callers: dict[Identity, Role]) -> Path:
        """The key set `aggregator` trusts: the public token key of each caller, for its role."""
        directory = self._dir(aggregator) / "token-keys"
        for caller, role in callers.items():
            kid = self.token(caller).kid
            install_public_key(directory, role, kid, self._token_keys[caller])
        return directory

    def _dir(self, identity: Identity) -> Path:
        return self.directory / f"{identity.jurisdiction}-{identity.tier.value}-{identity.node}"
