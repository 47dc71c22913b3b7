"""The token keys a receiver trusts, read from disk and re-read when they change (rotation).

Two layouts, chosen by what `path` is:

* a **directory** with one sub-directory per role, holding one PEM public key per file,
  named after its key id::

      token-keys/silo/hospital-a-2025-01.pem
      token-keys/regional/eu-1-2025-01.pem
      token-keys/operator/ml-team-1.pem
      token-keys/auditor/audit-office-1.pem

  A key trusted for two roles sits in both directories. Hidden files (``.name``, as left by
  atomic writes) and files not ending in ``.pem`` are ignored.

* a **JWKS file** (RFC 7517) whose keys are EC P-256 public keys with a ``kid`` and a
  jurisfed member ``roles``, e.g.
  ``{"keys": [{"kty": "EC", "crv": "P-256", "x": "...", "y": "...", "kid": "eu-1-2025-01",
  "use": "sig", "alg": "ES256", "roles": ["regional"]}]}``.

Rotation: add the new key, switch the node to it, remove the old key. The set is checked for
changes at most every `check_interval_s` and re-read when its content changed. Start-up
refuses an invalid set (`ConfigError`); an invalid set found later trusts no key at all
until it is fixed (fail closed), and says why in the log. Write files atomically (write,
then rename) so a half-written file is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt.exceptions import InvalidKeyError

from jurisfed.auth.tokens import ALGORITHM, KID_PATTERN, Role, TrustedKey
from jurisfed.errors import ConfigError
from jurisfed.store.files import write_atomically

_LOG = logging.getLogger("jurisfed.auth.tokens")

DEFAULT_CHECK_INTERVAL_S = 1.0
PEM_SUFFIX = ".pem"
# A key set is a few hundred bytes per key; refuse to parse anything absurd.
_MAX_FILE_BYTES = 1 << 20


class KeySet:
    """The trusted token keys under `path` (directory or JWKS file), by key id. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        files = _files(path)  # ConfigError at start-up: nothing to fall back on
        fingerprint, keys = _digest(files), _parse(path, files)
        if not keys:
            raise ConfigError(f"token key set {path} holds no key")
        self._fingerprint: bytes | None = fingerprint
        self._keys: Mapping[str, TrustedKey] = keys
        self._checked_at = clock()

    @property
    def path(self) -> Path:
        return self._path

    def get(self, kid: str) -> TrustedKey | None:
        """The trusted key named `kid`, after picking up any change on disk; None if not trusted."""
        self._refresh()
        return self._keys.get(kid)

    def kids(self) -> frozenset[str]:
        self._refresh()
        return frozenset(self._keys)

    def _refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if now - self._checked_at < self._check_interval_s:
                return
            self._checked_at = now
            try:
                files = _files(self._path)
                fingerprint = _digest(files)
                if fingerprint == self._fingerprint:
                    return
                keys = _parse(self._path, files)
            except ConfigError as error:
                if self._fingerprint is not None:  # log the change to broken once, not every check
                    _LOG.error("token key set unusable, trusting no token key until fixed: %s", error)
                self._keys, self._fingerprint = {}, None
                return
            _LOG.info("token key set %s reloaded: %s", self._path, ", ".join(sorted(keys)) or "no keys")
            self._keys, self._fingerprint = keys, fingerprint


def install_public_key(directory: Path, role: Role, kid: str, public_key: ec.EllipticCurvePublicKey) -> Path:
    """Trust `public_key` as `kid` for `role` in the key-set directory (atomically; 0644)."""
    if not KID_PATTERN.fullmatch(kid):
        raise ConfigError(f"token key id {kid!r} must match {KID_PATTERN.pattern}")
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = directory / role.value / f"{kid}{PEM_SUFFIX}"
    _write_atomically(path, pem, mode=0o644)
    return path


def write_jwks(path: Path, keys: Iterable[TrustedKey]) -> Path:
    """Write `keys` as a JWKS file `KeySet` reads (atomically; 0644)."""
    entries = []
    for key in keys:
        jwk = ECAlgorithm.to_jwk(key.public_key, as_dict=True)
        entries.append(
            {
                **jwk,
                "kid": key.kid,
                "use": "sig",
                "alg": ALGORITHM,
                "roles": sorted(r.value for r in key.roles),
            }
        )
    _write_atomically(path, json.dumps({"keys": entries}, indent=2).encode(), mode=0o644)
    return path


def generate_token_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Create a P-256 token signing key at `path` (0600, never overwriting); return it."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a token key") from None
    except OSError as error:
        raise ConfigError(f"cannot write token key {path}: {error.strerror}") from None
    return key


# --- reading --------------------------------------------------------------------------------------


def _parse(path: Path, files: Sequence[tuple[Path, bytes]]) -> dict[str, TrustedKey]:
    """The keys by kid; ConfigError naming the first problem."""
    if path.is_dir():
        return _from_directory(path, files)
    return _from_jwks(path, files[0][1])


def _digest(files: Sequence[tuple[Path, bytes]]) -> bytes:
    digest = hashlib.sha256()
    for name, content in files:
        for part in (str(name).encode(), content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.digest()


def _files(path: Path) -> list[tuple[Path, bytes]]:
    """The files that make up the key set, with their content, in a stable order."""
    try:
        if not path.is_dir():
            return [(path, _read(path))]
        found = []
        for entry in sorted(path.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                if entry.name.endswith(PEM_SUFFIX):
                    raise ConfigError(
                        f"token key {entry} is outside a role directory ({', '.join(r.value for r in Role)})"
                    )
                continue
            found += [
                (file, _read(file))
                for file in sorted(entry.iterdir())
                if file.name.endswith(PEM_SUFFIX) and not file.name.startswith(".")
            ]
        return found
    except OSError as error:
        raise ConfigError(f"token key set {path} cannot be read: {error.strerror}") from None


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            content = file.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"token key set {path} does not exist") from None
    if len(content) > _MAX_FILE_BYTES:
        raise ConfigError(f"token key file {path} is larger than {_MAX_FILE_BYTES} bytes")
    return content


def _from_directory(directory: Path, files: Sequence[tuple[Path, bytes]]) -> dict[str, TrustedKey]:
    keys: dict[str, TrustedKey] = {}
    for path, content in files:
        role_name, kid = path.parent.name, path.name.removesuffix(PEM_SUFFIX)
        try:
            role = Role(role_name)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ConfigError(f"{path.parent} is not a role directory (known roles: {known})") from None
        if not KID_PATTERN.fullmatch(kid):
            raise ConfigError(
                f"token key file name {path.name!r}: the key id must match {KID_PATTERN.pattern}"
            )
        try:
            public_key = serialization.load_pem_public_key(content)
        except (ValueError, TypeError):
            raise ConfigError(f"token key {path} is not a PEM public key") from None
        key = TrustedKey(kid, _p256(public_key, path), frozenset({role}))
        keys[kid] = _merge(keys.get(kid), key, directory)
    return keys


def _merge(known: TrustedKey | None, key: TrustedKey, where: Path) -> TrustedKey:
    """One kid in two role directories: the same key, trusted for both roles."""
    if known is None:
        return key
    if _spki(known.public_key) != _spki(key.public_key):
        raise ConfigError(f"token key id {key.kid!r} names two different keys in {where}")
    return TrustedKey(key.kid, key.public_key, known.roles | key.roles)


def _from_jwks(path: Path, content: bytes) -> dict[str, TrustedKey]:
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        raise ConfigError(f"token key set {path} is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"token key set {path} must be a JSON object with a list 'keys'")
    keys: dict[str, TrustedKey] = {}
    for position, entry in enumerate(entries, start=1):
        key = _from_jwk(entry, f"{path} key {position}")
        if key.kid in keys:
            raise ConfigError(f"{path}: key id {key.kid!r} appears twice")
        keys[key.kid] = key
    return keys


def _from_jwk(entry: object, where: str) -> TrustedKey:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise ConfigError(f"{where}: 'kid' must match {KID_PATTERN.pattern}")
    where = f"{where} ({kid})"
    if "d" in entry:
        raise ConfigError(f"{where} contains a private key; a key set holds public keys only")
    if entry.get("alg", ALGORITHM) != ALGORITHM or entry.get("use", "sig") != "sig":
        raise ConfigError(f"{where}: only signature keys for {ALGORITHM} are accepted")
    if entry.get("kty") != "EC" or entry.get("crv") != "P-256":
        raise ConfigError(f"{where}: must be an EC key on curve P-256 (kty EC, crv P-256)")
    role_names = entry.get("roles")
    if not isinstance(role_names, list) or not role_names:
        raise ConfigError(f"{where}: 'roles' must list the roles the key signs for")
    try:
        roles = frozenset(Role(name) for name in role_names)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise ConfigError(f"{where}: unknown role in {role_names} (known: {known})") from None
    try:
        public_key = ECAlgorithm.from_jwk(entry)
    except InvalidKeyError as error:
        raise ConfigError(f"{where}: not a valid EC key: {error}") from None
    return TrustedKey(kid, _p256(public_key, where), roles)


def _p256(public_key: object, where: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise ConfigError(f"token key {where} is not an EC P-256 public key (needed for {ALGORITHM})")
    return public_key


def _spki(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, mode=mode)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}") from None
