"""The federation CA and the node certificates it issues (EC P-256 keys, SHA-256 signatures).

A node certificate names its identity in a ``jurisfed://`` URI SAN (see `identity`), carries
DNS/IP SANs for TLS hostname checks, and may be used both as a server and as a client
certificate. Private keys are written 0600 in 0700 directories; the CA refuses to be
overwritten.

Layout on disk::

    ca_dir/ca.crt  ca_dir/ca.key                   (create_ca)
    out_dir/ca.crt out_dir/tls.crt out_dir/tls.key (issue)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jurisfed.auth.identity import Identity, Tier, identity_from_certificate
from jurisfed.errors import ConfigError, Unauthenticated
from jurisfed.store.files import write_atomically

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"

# Certificates start a little in the past so that a peer whose clock is slightly behind
# accepts them.
_BACKDATE = datetime.timedelta(minutes=5)
_MAX_COMMON_NAME = 64


@dataclass(frozen=True)
class TlsFiles:
    """Where a node's TLS material lives: the federation CA, its certificate and its key."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TlsFiles:
        """The files `issue` writes into `directory`."""
        return cls(ca_cert=directory / CA_CERT_NAME, cert=directory / CERT_NAME, key=directory / KEY_NAME)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca_cert, cert, key) as PEM bytes; `ConfigError` names any file that cannot be read."""
        return _read(self.ca_cert, "CA certificate"), _read(self.cert, "certificate"), _read(self.key, "key")


def create_ca(
    directory: Path, *, common_name: str = "jurisfed federation CA", valid_days: int = 3650
) -> Path:
    """Create the federation CA in `directory` (``ca.crt``, ``ca.key``); never overwrites one."""
    if valid_days < 1:
        raise ConfigError(f"CA validity must be at least one day, not {valid_days}")
    for file_name in (CA_CERT_NAME, CA_KEY_NAME):
        if (directory / file_name).exists():
            raise ConfigError(f"{directory / file_name} already exists; refusing to overwrite a CA")
    _make_private_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key goes first and exclusively: two concurrent create_ca calls cannot both win.
    _write(directory / CA_KEY_NAME, _key_pem(key), mode=0o600, exclusive=True)
    _write(
        directory / CA_CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, exclusive=True
    )
    return directory


def issue(
    ca_dir: Path,
    identity: Identity,
    out_dir: Path,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    valid_days: int = 365,
) -> TlsFiles:
    """Issue a certificate for `identity` signed by the CA in `ca_dir`, with a new key in `out_dir`.

    Writes ``tls.key`` (0600), ``tls.crt`` and a copy of ``ca.crt`` into `out_dir` (0700),
    replacing what a previous issue wrote there. The certificate is valid for server and
    client authentication and never outlives the CA.
    """
    if valid_days < 1:
        raise ConfigError(f"certificate validity must be at least one day, not {valid_days}")
    ca_cert, ca_key = _load_ca(ca_dir)
    try:
        ips = [ipaddress.ip_address(address) for address in ip_addresses]
    except ValueError as error:
        raise ConfigError(f"invalid IP address for a certificate: {error}") from None
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    sans += [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    # CN is informational (the URI SAN is the identity) and limited to 64 characters.
    common_name = identity.uri if len(identity.uri) <= _MAX_COMMON_NAME else identity.node

    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles.in_directory(out_dir)
    _make_private_dir(out_dir)
    _write(files.key, _key_pem(key), mode=0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def certificate_identity(cert_path: Path) -> Identity:
    """The identity named by this node's own certificate; read at start-up to check the config.

    `ConfigError` when the file is unreadable, not a certificate, outside its validity period,
    or does not name exactly one valid ``jurisfed://`` identity.
    """
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, "certificate"))
    except ValueError:
        raise ConfigError(f"{cert_path} is not a PEM certificate") from None
    now = datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"certificate {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    try:
        return identity_from_certificate(cert)
    except Unauthenticated as error:
        raise ConfigError(f"certificate {cert_path}: {error}") from None


def own_identity(cert_path: Path, tier: Tier, jurisdiction: str | None = None) -> Identity:
    """This node's identity, refusing to start when its certificate is for another role or place."""
    identity = certificate_identity(cert_path)
    wanted = f"jurisfed://{jurisdiction or '<jurisdiction>'}/{tier.value}/<node>"
    if identity.tier is not tier or (jurisdiction is not None and identity.jurisdiction != jurisdiction):
        raise ConfigError(f"certificate {cert_path} names {identity}; this process needs {wanted}")
    return identity


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_dir / CA_CERT_NAME, ca_dir / CA_KEY_NAME
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, "CA certificate"))
    except ValueError:
        raise ConfigError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path, "CA key"), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC private key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigError(f"{key_path} does not belong to {cert_path}")
    return cert, key


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what} file {path} cannot be read: {error.strerror}") from None


def _make_private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    except OSError as error:
        raise ConfigError(f"cannot create directory {directory}: {error.strerror}") from None


def _write(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
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
