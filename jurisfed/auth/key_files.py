"""Writing keys and certificates: owner-only directories, keys 0600 from their first byte.

Shared by the CA, node enrolment and revocation lists, so every file of the PKI is written
the same way and every failure is a `ConfigError` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jurisfed.errors import ConfigError
from jurisfed.store.files import write_atomically


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM, for a file only its owner can read."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def read_file(path: Path, what: str) -> bytes:
    """The bytes of `path`; `ConfigError` saying which `what` is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what} file {path} cannot be read: {error.strerror}") from None


def make_private_dir(directory: Path) -> None:
    """Create `directory` (and parents) and make it 0700."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    except OSError as error:
        raise ConfigError(f"cannot create directory {directory}: {error.strerror}") from None


def write_file(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
    """Write `data` to `path` with `mode` from the first byte on (no window with wider rights).

    `exclusive` fails if `path` exists; otherwise the file is replaced atomically.
    """
    try:
        if exclusive:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            return
        write_atomically(path, data, mode=mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}") from None
