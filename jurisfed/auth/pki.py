"""The federation CA and the node certificates it issues (EC P-256 keys, SHA-256 signatures).

A node certificate names its identity in a ``jurisfed://`` URI SAN (see `identity`), carries
DNS/IP SANs for TLS hostname checks, and may be used both as a server and as a client
certificate. Private keys are written 0600 in 0700 directories; the CA refuses to be
overwritten.

Layout on disk::

    ca_dir/ca.crt  ca_dir/ca.key                   (create_ca)
    ca_dir/crl.pem                                 (revocation.publish_crl, revocation.revoke)
    out_dir/ca.crt out_dir/tls.crt out_dir/tls.key (issue, enrolment.rotate)
    out_dir/tls.key out_dir/tls.csr                (enrolment.create_request, on the node)
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jurisfed.auth.identity import Identity, Tier, identity_from_certificate
from jurisfed.auth.key_files import make_private_dir, private_key_pem, read_file, write_file
from jurisfed.errors import ConfigError, Unauthenticated

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
CSR_NAME = "tls.csr"

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
        return (
            read_file(self.ca_cert, "CA certificate"),
            read_file(self.cert, "certificate"),
            read_file(self.key, "key"),
        )


def create_ca(
    directory: Path, *, common_name: str = "jurisfed federation CA", valid_days: int = 3650
) -> Path:
    """Create the federation CA in `directory` (``ca.crt``, ``ca.key``); never overwrites one."""
    if valid_days < 1:
        raise ConfigError(f"CA validity must be at least one day, not {valid_days}")
    for file_name in (CA_CERT_NAME, CA_KEY_NAME):
        if (directory / file_name).exists():
            raise ConfigError(f"{directory / file_name} already exists; refusing to overwrite a CA")
    make_private_dir(directory)
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
    write_file(directory / CA_KEY_NAME, private_key_pem(key), mode=0o600, exclusive=True)
    write_file(
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
    not_before: datetime.datetime | None = None,
) -> TlsFiles:
    """Issue a certificate for `identity` signed by the CA in `ca_dir`, with a new key in `out_dir`.

    Writes ``tls.key`` (0600), ``tls.crt`` and a copy of ``ca.crt`` into `out_dir` (0700),
    replacing what a previous issue wrote there. The certificate is valid for server and
    client authentication and never outlives the CA. It is valid from `not_before` (default:
    now, less a few minutes of clock skew) for `valid_days`.
    """
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = node_certificate(
        ca_cert,
        ca_key,
        identity,
        key.public_key(),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        valid_days=valid_days,
        not_before=not_before,
    )
    files = TlsFiles.in_directory(out_dir)
    make_private_dir(out_dir)
    write_file(files.key, private_key_pem(key), mode=0o600)
    write_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_file(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def node_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity: Identity,
    public_key: ec.EllipticCurvePublicKey,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    valid_days: int,
    not_before: datetime.datetime | None = None,
) -> x509.Certificate:
    """A node certificate for `identity` and `public_key`, signed by the CA (see `issue`)."""
    if valid_days < 1:
        raise ConfigError(f"certificate validity must be at least one day, not {valid_days}")
    try:
        ips = [ipaddress.ip_address(address) for address in ip_addresses]
    except ValueError as error:
        raise ConfigError(f"invalid IP address for a certificate: {error}") from None
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    sans += [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]

    now = datetime.datetime.now(datetime.UTC)
    start = now - _BACKDATE if not_before is None else not_before
    end = (now if not_before is None else not_before) + datetime.timedelta(days=valid_days)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject_name(identity))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
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


def subject_name(identity: Identity) -> x509.Name:
    """The subject of `identity`'s certificate. Informational only (the URI SAN is the identity):
    the full URI, or the node name where the URI exceeds the 64 characters a CN may hold."""
    common_name = identity.uri if len(identity.uri) <= _MAX_COMMON_NAME else identity.node
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate_identity(cert_path: Path) -> Identity:
    """The identity named by this node's own certificate; read at start-up to check the config.

    `ConfigError` when the file is unreadable, not a certificate, outside its validity period,
    or does not name exactly one valid ``jurisfed://`` identity.
    """
    cert = read_certificate(cert_path)
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


def read_certificate(path: Path) -> x509.Certificate:
    """The PEM certificate at `path`; `ConfigError` when it cannot be read or is not one."""
    try:
        return x509.load_pem_x509_certificate(read_file(path, "certificate"))
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def serial_text(serial: int) -> str:
    """A certificate serial as operators see it (upper-case hex, as OpenSSL prints it)."""
    return f"{serial:X}"


def check_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, where: Path) -> None:
    """`ConfigError` unless `cert` (read from `where`) carries this CA's signature."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{where} was not issued by this CA ({_common_name(ca_cert)})") from None


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in `ca_dir`; `ConfigError` unless they are a matching EC pair."""
    cert_path, key_path = ca_dir / CA_CERT_NAME, ca_dir / CA_KEY_NAME
    try:
        cert = x509.load_pem_x509_certificate(read_file(cert_path, "CA certificate"))
    except ValueError:
        raise ConfigError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(read_file(key_path, "CA key"), password=None)
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
