"""How a node gets its certificate with a key that never leaves it, and how it renews one.

Production flow, two machines::

    node:  create_request(identity, node_dir)        -> node_dir/tls.key (0600), node_dir/tls.csr
    CA:    sign_request(ca_dir, tls.csr, identity)   -> the certificate; back to node_dir/tls.crt

Only the request and the certificate travel; both are public. `pki.issue` makes the key at
the CA instead, which is fine for a laptop demo and tests, not for a federation.

`rotate` re-issues a node's certificate with a new key and leaves the old certificate valid
until it expires or is revoked, so the node switches without a gap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jurisfed.auth.identity import SCHEME, Identity, identity_from_certificate
from jurisfed.auth.key_files import make_private_dir, private_key_pem, read_file, write_file
from jurisfed.auth.pki import (
    CSR_NAME,
    KEY_NAME,
    TlsFiles,
    check_issued_by,
    issue,
    load_ca,
    node_certificate,
    read_certificate,
    subject_name,
)
from jurisfed.errors import ConfigError, Unauthenticated


def create_request(
    identity: Identity,
    out_dir: Path,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
) -> Path:
    """On the node: a new key (``tls.key``, 0600) and a signing request for it (``tls.csr``).

    The key never leaves `out_dir`; only the request goes to the CA (`sign_request`). Refuses
    to overwrite a key already there. Returns the path of the request.
    """
    try:
        ips = [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    except ValueError as error:
        raise ConfigError(f"invalid IP address for a certificate: {error}") from None
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    names += [*(x509.DNSName(name) for name in dns_names), *ips]
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(identity))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    make_private_dir(out_dir)
    write_file(out_dir / KEY_NAME, private_key_pem(key), mode=0o600, exclusive=True)
    write_file(out_dir / CSR_NAME, request.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return out_dir / CSR_NAME


def read_request(request_path: Path) -> tuple[x509.CertificateSigningRequest, Identity]:
    """The request at `request_path` and the identity it asks for, once its self-signature verifies."""
    try:
        request = x509.load_pem_x509_csr(read_file(request_path, "certificate request"))
    except ValueError:
        raise ConfigError(f"{request_path} is not a PEM certificate signing request") from None
    if not request.is_signature_valid:
        raise ConfigError(f"{request_path}: the request's signature does not verify with its own key")
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ConfigError(f"{request_path} names no identity: it has no subject alternative names") from None
    uris = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.lower().startswith(f"{SCHEME}:")
    ]
    if len(uris) != 1:
        raise ConfigError(f"{request_path} must name exactly one {SCHEME}:// identity, it names {len(uris)}")
    try:
        return request, Identity.parse(uris[0])
    except Unauthenticated as error:
        raise ConfigError(f"{request_path}: {error}") from None


def sign_request(
    ca_dir: Path, request_path: Path, identity: Identity, *, valid_days: int = 365
) -> x509.Certificate:
    """At the CA: a certificate for the key in the request at `request_path`.

    `identity` is whom the CA operator means to certify; a request naming anyone else is
    refused, as is one whose self-signature does not verify or whose key is not EC P-256.
    The certificate carries the request's DNS and IP names and jurisfed's usual extensions,
    never extensions of the request's choosing.
    """
    request, requested = read_request(request_path)
    if requested != identity:
        raise ConfigError(f"{request_path} asks for {requested}, not {identity}; refusing to sign it")
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise ConfigError(f"{request_path}: the key must be EC P-256 (make it with `jurisfed pki request`)")
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ca_cert, ca_key = load_ca(ca_dir)
    return node_certificate(
        ca_cert,
        ca_key,
        identity,
        public_key,
        dns_names=san.get_values_for_type(x509.DNSName),
        ip_addresses=[str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        valid_days=valid_days,
    )


def write_certificate(path: Path, cert: x509.Certificate) -> Path:
    """Write `cert` as PEM to `path` (0644); refuses to replace an existing file."""
    write_file(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, exclusive=True)
    return path


def rotate(ca_dir: Path, node_dir: Path, *, valid_days: int = 365) -> tuple[x509.Certificate, TlsFiles]:
    """Re-issue the certificate in `node_dir` with a new key: same identity, DNS and IP names.

    Returns the certificate it replaced. That one is not revoked: it stays valid until it
    expires or `revocation.revoke` retires it, so peers holding connections are not cut off.
    """
    files = TlsFiles.in_directory(node_dir)
    old = read_certificate(files.cert)
    ca_cert, _ = load_ca(ca_dir)
    check_issued_by(old, ca_cert, files.cert)
    try:
        identity = identity_from_certificate(old)
    except Unauthenticated as error:
        raise ConfigError(f"certificate {files.cert}: {error}") from None
    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    new = issue(
        ca_dir,
        identity,
        node_dir,
        dns_names=san.get_values_for_type(x509.DNSName),
        ip_addresses=[str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        valid_days=valid_days,
    )
    return old, new
