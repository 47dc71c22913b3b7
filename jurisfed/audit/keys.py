"""Ed25519 keys that sign audit checkpoints, as PEM files.

The private key is written 0600 and refused when group or others may read it (as ssh does);
the public key goes next to it as ``<name>.pub``. A key is named by its id: the SHA-256 of
its 32 raw bytes, the fingerprint an operator publishes and a regulator compares.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jurisfed.errors import ConfigError

PUBLIC_SUFFIX = ".pub"
_PEM_END = b"-----END PUBLIC KEY-----"


def create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Write a new private key to `path` (0600, never overwriting) and its public key to `path.pub`."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a signing key") from None
    except OSError as error:
        raise ConfigError(f"cannot create {path}: {error.strerror}") from None
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    public_path(path).write_bytes(public_pem(key.public_key()))
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The private key in `path`; `ConfigError` if unreadable, not Ed25519, or readable by others."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"audit signing key {path} cannot be read: {error.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"audit signing key {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every PEM public key in `path` (a log's ``.pub`` file holds one per key it was signed with)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"public key file {path} cannot be read: {error.strerror}") from None
    keys = parse_public_keys(data)
    if not keys:
        raise ConfigError(f"{path} holds no PEM public key")
    return keys


def parse_public_keys(data: bytes) -> list[Ed25519PublicKey]:
    keys = []
    for block in data.split(_PEM_END)[:-1]:
        try:
            key = serialization.load_pem_public_key(block.strip() + b"\n" + _PEM_END + b"\n")
        except ValueError:
            raise ConfigError("a public key block is not valid PEM") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("audit public keys must be Ed25519")
        keys.append(key)
    return keys


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, in hex: the key's fingerprint."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def keys_by_id(keys: Sequence[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    return {key_id(key): key for key in keys}


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + PUBLIC_SUFFIX)


def fingerprint(identifier: str) -> str:
    """A key id as people read it aloud: the first 32 hex digits in groups of four."""
    return " ".join(identifier[i : i + 4] for i in range(0, 32, 4)).upper()
