"""What the files of the PKI say, in lines an operator reads (`jurisfed pki show`).

Certificates, certificate requests and revocation lists are described; a private key is
refused, never printed.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from jurisfed.auth.enrolment import read_request
from jurisfed.auth.identity import identity_from_certificate
from jurisfed.auth.key_files import read_file
from jurisfed.auth.pki import CA_CERT_NAME, check_issued_by, read_certificate, serial_text
from jurisfed.auth.revocation import Crl, read_crl
from jurisfed.errors import ConfigError, JurisfedError


def describe_file(path: Path, *, ca: Path | None = None, crl: Path | None = None) -> list[str]:
    """Describe the certificate, request or CRL at `path`; `ca` (a CA directory or its ca.crt)
    verifies signatures, `crl` says whether a certificate is revoked."""
    content = read_file(path, "input")
    if b"PRIVATE KEY-----" in content:
        raise ConfigError(f"{path} is a private key; `show` never prints keys")
    if b"-----BEGIN X509 CRL-----" in content:
        if ca is None:
            raise ConfigError("--ca is needed to verify a revocation list")
        return _crl_lines(path, read_crl(path, _ca_certificate(ca)))
    if b"-----BEGIN CERTIFICATE REQUEST-----" in content:
        _, identity = read_request(path)
        return [f"request:     {path}", f"asks for:    {identity} (its signature verifies)"]
    cert = read_certificate(path)
    lines = _certificate_lines(path, cert)
    if ca is not None:
        check_issued_by(cert, _ca_certificate(ca), path)
        lines.append("issued by:   this CA (signature verifies)")
    if crl is not None:
        if ca is None:
            raise ConfigError("--ca is needed to verify the revocation list given with --crl")
        revocation = read_crl(crl, _ca_certificate(ca)).revoked.get(cert.serial_number)
        lines.append(f"revoked:     {revocation.describe() if revocation else 'no'}")
    return lines


def validity(cert: x509.Certificate) -> str:
    """``valid <from> to <until> UTC``."""
    return (
        f"valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )


def who(cert: x509.Certificate) -> str:
    """The identity `cert` names, or why it names none."""
    try:
        return identity_from_certificate(cert).uri
    except JurisfedError as error:
        return f"none ({error})"


def _certificate_lines(path: Path, cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    names = [f"DNS {name}" for name in san.get_values_for_type(x509.DNSName)]
    names += [f"IP {ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    now = datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        state = "EXPIRED"
    elif now < cert.not_valid_before_utc:
        state = "NOT YET VALID"
    else:
        state = "current"
    return [
        f"certificate: {path}",
        f"identity:    {who(cert)}",
        f"serial:      {serial_text(cert.serial_number)}",
        f"issuer:      {cert.issuer.rfc4514_string()}",
        f"validity:    {validity(cert)} ({state})",
        f"names:       {', '.join(names) or 'none'}",
        f"sha256:      {cert.fingerprint(hashes.SHA256()).hex(':')}",
    ]


def _crl_lines(path: Path, crl: Crl) -> list[str]:
    lines = [
        f"revocation list: {path} (signature verifies with the CA)",
        f"number {crl.number}, issued {crl.issued_at:%Y-%m-%d %H:%M} UTC, "
        f"next update due {crl.next_update:%Y-%m-%d %H:%M} UTC",
        f"{len(crl.revoked)} revoked certificate(s)",
    ]
    lines += [f"  {r.describe()}" for r in sorted(crl.revoked.values(), key=lambda r: r.revoked_at)]
    return lines


def _ca_certificate(path: Path) -> x509.Certificate:
    return read_certificate(path / CA_CERT_NAME if path.is_dir() else path)
