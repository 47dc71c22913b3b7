"""Certificate revocation: the CRL the CA signs, and the list running servers check calls against.

CA side: `publish_crl` writes the CA's X.509 CRL (``ca_dir/crl.pem`` unless told otherwise),
empty at first, or signs it again with fresh dates; `revoke` adds a certificate's serial.
Each CRL carries a number one higher than the last, is valid until its ``nextUpdate`` and is
replaced atomically, under a lock, so two operators revoking at once lose nothing.

Server side: `RevocationList` holds the CRL a server was started with and checks every call's
peer certificate against it (see `jurisfed.rpc.revocation_interceptor`). It looks at the file
at most every `check_interval_s` and re-reads it when its content changed, so a revocation
takes effect within about a second, without a restart, even on connections already open.

Fail closed: a CRL that is missing, unreadable, not signed by the federation CA, past its
``nextUpdate`` or older (lower number) than the one in use refuses start-up (`ConfigError`);
found while running, it makes the server refuse **every** certificate until it is fixed, and
says so once in the log.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jurisfed.auth.identity import identity_from_certificate
from jurisfed.auth.key_files import read_file, write_file
from jurisfed.auth.pki import load_ca, read_certificate, serial_text
from jurisfed.errors import ConfigError, JurisfedError, Unauthenticated

_LOG = logging.getLogger("jurisfed.auth.revocation")

CRL_NAME = "crl.pem"
DEFAULT_CRL_DAYS = 365
DEFAULT_CHECK_INTERVAL_S = 1.0
# About 40 bytes per revoked certificate: room for hundreds of thousands, and no more.
_MAX_CRL_BYTES = 16 << 20

# The reasons an operator may give (RFC 5280 §5.3.1), as the command line spells them.
REASONS: Mapping[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

Clock = Callable[[], datetime.datetime]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate: its serial, when it was revoked and why (None: not said)."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None

    def describe(self) -> str:
        reason = f" ({self.reason.name.replace('_', ' ')})" if self.reason is not None else ""
        return f"serial {serial_text(self.serial)} revoked {self.revoked_at:%Y-%m-%d %H:%M} UTC{reason}"


@dataclass(frozen=True)
class Crl:
    """A CRL whose signature verified against the federation CA."""

    number: int
    issued_at: datetime.datetime
    next_update: datetime.datetime
    revoked: Mapping[int, Revocation]


# --- CA side --------------------------------------------------------------------------------------


def publish_crl(
    ca_dir: Path, crl_path: Path | None = None, *, valid_days: int = DEFAULT_CRL_DAYS
) -> tuple[Path, Crl]:
    """Write the CA's CRL with fresh dates: empty if there is none yet, else the same entries.

    An existing CRL that does not verify is a `ConfigError`, never silently replaced: that
    would forget revocations.
    """
    path = crl_path or ca_dir / CRL_NAME
    with _locked(path):
        ca_cert, ca_key = load_ca(ca_dir)
        current = read_crl(path, ca_cert) if path.exists() else None
        revoked = current.revoked if current is not None else {}
        return path, _write_crl(path, ca_cert, ca_key, revoked, current, valid_days)


def revoke(
    ca_dir: Path,
    serial: int,
    *,
    crl_path: Path | None = None,
    reason: x509.ReasonFlags | None = None,
    valid_days: int = DEFAULT_CRL_DAYS,
) -> tuple[Revocation, bool]:
    """Add `serial` to the CA's CRL (created if missing) and sign it again.

    Returns the revocation and whether it is new; revoking a serial twice changes nothing.
    """
    if serial <= 0:
        raise ConfigError(f"a certificate serial is a positive number, not {serial}")
    path = crl_path or ca_dir / CRL_NAME
    with _locked(path):
        ca_cert, ca_key = load_ca(ca_dir)
        current = read_crl(path, ca_cert) if path.exists() else None
        revoked = dict(current.revoked) if current is not None else {}
        if serial in revoked:
            return revoked[serial], False
        revoked[serial] = Revocation(serial, _utc_now().replace(microsecond=0), reason)
        _write_crl(path, ca_cert, ca_key, revoked, current, valid_days)
        return revoked[serial], True


def _write_crl(
    path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Mapping[int, Revocation],
    current: Crl | None,
    valid_days: int,
) -> Crl:
    if valid_days < 1:
        raise ConfigError(f"a revocation list must be valid for at least one day, not {valid_days}")
    now = _utc_now().replace(microsecond=0)
    next_update = min(now + datetime.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    number = current.number + 1 if current is not None else 1
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for entry in sorted(revoked.values(), key=lambda r: r.serial):
        revoked_cert = x509.RevokedCertificateBuilder().serial_number(entry.serial)
        revoked_cert = revoked_cert.revocation_date(entry.revoked_at)
        if entry.reason is not None:
            revoked_cert = revoked_cert.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(revoked_cert.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    write_file(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return Crl(number, now, next_update, dict(revoked))


@contextlib.contextmanager
def _locked(crl_path: Path) -> Iterator[None]:
    """Hold the CA's CRL lock (a hidden file beside the CRL) for one read-modify-write."""
    lock_path = crl_path.parent / f".{crl_path.name}.lock"
    try:
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
    except OSError as error:
        raise ConfigError(f"cannot lock {lock_path}: {error.strerror}") from None


# --- reading --------------------------------------------------------------------------------------


def read_crl(path: Path, ca_cert: x509.Certificate) -> Crl:
    """The CRL at `path`, verified against `ca_cert` (its age is not checked here)."""
    return _parse(_read_limited(path), ca_cert, path)


def _read_limited(path: Path) -> bytes:
    content = read_file(path, "revocation list")
    if len(content) > _MAX_CRL_BYTES:
        raise ConfigError(f"revocation list {path} is larger than {_MAX_CRL_BYTES} bytes")
    return content


def _parse(content: bytes, ca_cert: x509.Certificate, path: Path) -> Crl:
    try:
        crl = x509.load_pem_x509_crl(content)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate revocation list") from None
    if crl.issuer != ca_cert.subject:
        raise ConfigError(f"{path} was issued by {crl.issuer.rfc4514_string()}, not the federation CA")
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public_key):
        raise ConfigError(f"{path}: the signature does not verify with the federation CA's key")
    if crl.next_update_utc is None:
        raise ConfigError(f"{path} has no nextUpdate date; publish it with `jurisfed pki crl`")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    revoked = {}
    for entry in crl:
        try:
            reason: x509.ReasonFlags | None = entry.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason
        except x509.ExtensionNotFound:
            reason = None
        revoked[entry.serial_number] = Revocation(entry.serial_number, entry.revocation_date_utc, reason)
    return Crl(number, crl.last_update_utc, crl.next_update_utc, revoked)


# --- server side ----------------------------------------------------------------------------------


class RevocationList:
    """The federation CA's CRL as a running server sees it: checked per call, re-read on change.

    Thread-safe. `check` raises `Unauthenticated` for a revoked certificate, and for every
    certificate while the CRL is unusable (fail closed).
    """

    def __init__(
        self,
        ca_cert: Path,
        crl: Path,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        now: Clock = _utc_now,
    ) -> None:
        self._ca_cert = read_certificate(ca_cert)
        self._path = crl
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        content = _read_limited(crl)  # ConfigError at start-up: nothing to fall back on
        loaded = _parse(content, self._ca_cert, crl)
        if self._now() > loaded.next_update:
            raise ConfigError(f"{_stale(crl, loaded)}; publish a fresh one with `jurisfed pki crl`")
        self._crl: Crl | None = loaded
        self._highest_number = loaded.number
        self._fingerprint = hashlib.sha256(content).digest()
        self._problem: str | None = None
        self._checked_at = clock()

    @property
    def path(self) -> Path:
        return self._path

    def check(self, cert: x509.Certificate) -> None:
        """`Unauthenticated` when `cert` is revoked, or when no valid CRL is at hand."""
        revocation = self._current().revoked.get(cert.serial_number)
        if revocation is not None:
            raise Unauthenticated(
                f"certificate serial {serial_text(cert.serial_number)} ({_who(cert)}) was revoked on "
                f"{revocation.revoked_at:%Y-%m-%d %H:%M} UTC"
            )

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """Whether `check` refuses `cert`: revoked, or any certificate while the CRL is unusable."""
        try:
            self.check(cert)
        except Unauthenticated:
            return True
        return False

    def _current(self) -> Crl:
        with self._lock:
            self._refresh()
            crl = self._crl
            if crl is not None and self._now() > crl.next_update:
                self._report(_stale(self._path, crl))
                crl = None
        if crl is None:
            raise Unauthenticated(
                "this server cannot check certificate revocation (its revocation list is unusable); "
                "every call is refused until its operator fixes it"
            )
        return crl

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked_at < self._check_interval_s:
            return
        self._checked_at = now
        try:
            content = _read_limited(self._path)
        except JurisfedError as error:
            self._crl, self._fingerprint = None, b""
            self._report(str(error))
            return
        fingerprint = hashlib.sha256(content).digest()
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        try:
            crl = _parse(content, self._ca_cert, self._path)
        except JurisfedError as error:
            self._crl = None
            self._report(str(error))
            return
        if crl.number < self._highest_number:
            self._crl = None
            self._report(
                f"{self._path} is number {crl.number}, older than number {self._highest_number} "
                "already in use (a rolled-back file?)"
            )
            return
        self._crl, self._highest_number, self._problem = crl, crl.number, None
        _LOG.info(
            "revocation list %s reloaded: number %d, %d revoked certificate(s)",
            self._path,
            crl.number,
            len(crl.revoked),
        )

    def _report(self, problem: str) -> None:
        """Log why every certificate is refused, once per distinct problem."""
        if problem != self._problem:
            _LOG.error("revocation list unusable, refusing every certificate until fixed: %s", problem)
            self._problem = problem


def _stale(path: Path, crl: Crl) -> str:
    return f"revocation list {path} expired on {crl.next_update:%Y-%m-%d %H:%M} UTC (its nextUpdate)"


def _who(cert: x509.Certificate) -> str:
    try:
        return identity_from_certificate(cert).uri
    except Unauthenticated:
        return cert.subject.rfc4514_string() or "no identity"
