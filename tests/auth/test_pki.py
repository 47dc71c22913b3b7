"""The federation CA and node certificates: files, permissions, and what the certificates say."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jurisfed.auth.identity import Identity, Tier, identity_from_certificate
from jurisfed.auth.pki import TlsFiles, certificate_identity, create_ca, issue
from jurisfed.errors import ConfigError

SILO = Identity("EU", Tier.SILO, "hospital-a")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_create_ca_writes_a_p256_ca_with_a_private_key(tmp_path: Path) -> None:
    ca_dir = create_ca(tmp_path / "ca", common_name="test CA", valid_days=30)

    assert ca_dir == tmp_path / "ca"
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca.key") == 0o600
    cert = _load_cert(ca_dir / "ca.crt")
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)


def test_create_ca_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    ca_dir = create_ca(tmp_path / "ca")
    before = (ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes()

    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_ca(ca_dir)

    assert ((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes()) == before


def test_create_ca_refuses_a_directory_holding_only_a_ca_key(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"someone's key")
    with pytest.raises(ConfigError, match=r"ca\.key"):
        create_ca(tmp_path)
    assert not (tmp_path / "ca.crt").exists()


def test_issue_writes_key_certificate_and_ca_copy_privately(pki: Path, tmp_path: Path) -> None:
    files = issue(pki, SILO, tmp_path / "node")

    assert files == TlsFiles(
        ca_cert=tmp_path / "node" / "ca.crt",
        cert=tmp_path / "node" / "tls.crt",
        key=tmp_path / "node" / "tls.key",
    )
    assert _mode(tmp_path / "node") == 0o700
    assert _mode(files.key) == 0o600
    assert files.ca_cert.read_bytes() == (pki / "ca.crt").read_bytes()
    ca_cert, cert, key = files.read()
    assert (ca_cert, cert, key) == (
        files.ca_cert.read_bytes(),
        files.cert.read_bytes(),
        files.key.read_bytes(),
    )
    private_key = serialization.load_pem_private_key(key, password=None)
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    assert private_key.curve.name == "secp256r1"
    public_der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert _load_cert(files.cert).public_key().public_bytes(
        *public_der
    ) == private_key.public_key().public_bytes(*public_der)


def test_issued_certificate_names_the_identity_and_serves_both_ends_of_tls(pki: Path, tmp_path: Path) -> None:
    files = issue(
        pki,
        SILO,
        tmp_path / "node",
        dns_names=("hospital-a.eu.example", "localhost"),
        ip_addresses=("10.1.2.3", "::1"),
        valid_days=10,
    )
    cert = _load_cert(files.cert)
    ca_cert = _load_cert(pki / "ca.crt")

    cert.verify_directly_issued_by(ca_cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SILO.uri
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SILO.uri]
    assert san.get_values_for_type(x509.DNSName) == ["hospital-a.eu.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=9) < lifetime <= datetime.timedelta(days=10)
    assert identity_from_certificate(cert) == SILO


def test_issued_certificate_has_localhost_sans_by_default(pki: Path, tmp_path: Path) -> None:
    cert = _load_cert(issue(pki, SILO, tmp_path / "node").cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    ca_dir = create_ca(tmp_path / "ca", valid_days=5)
    cert = _load_cert(issue(ca_dir, SILO, tmp_path / "node", valid_days=365).cert)
    assert cert.not_valid_after_utc <= _load_cert(ca_dir / "ca.crt").not_valid_after_utc


def test_a_certificate_can_start_in_the_past_and_then_reads_as_expired(pki: Path, tmp_path: Path) -> None:
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=3)
    files = issue(pki, SILO, tmp_path / "node", valid_days=1, not_before=start)
    cert = _load_cert(files.cert)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        start,
        start + datetime.timedelta(days=1),
    )
    with pytest.raises(ConfigError, match="expired on"):
        certificate_identity(files.cert)


def test_long_identity_keeps_full_uri_san_and_a_short_common_name(pki: Path, tmp_path: Path) -> None:
    identity = Identity("ABCDEFGHIJKLMNOP", Tier.REGIONAL, "r" * 63)
    cert = _load_cert(issue(pki, identity, tmp_path / "node").cert)
    assert identity_from_certificate(cert) == identity
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.node


def test_reissuing_replaces_the_key(pki: Path, tmp_path: Path) -> None:
    first = issue(pki, SILO, tmp_path / "node").key.read_bytes()
    files = issue(pki, SILO, tmp_path / "node")
    assert files.key.read_bytes() != first
    assert _mode(files.key) == 0o600
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


def test_issue_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca\.crt"):
        issue(tmp_path / "nowhere", SILO, tmp_path / "node")
    assert not (tmp_path / "node").exists()


def test_issue_refuses_an_invalid_ip_address(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IP address"):
        issue(pki, SILO, tmp_path / "node", ip_addresses=("10.0.0.300",))


def test_reading_tls_files_names_the_missing_one(pki: Path, tmp_path: Path) -> None:
    files = issue(pki, SILO, tmp_path / "node")
    files.key.unlink()
    with pytest.raises(ConfigError, match=r"key file .*tls\.key does not exist"):
        files.read()


def test_a_node_reads_its_identity_from_its_own_certificate(pki: Path, tmp_path: Path) -> None:
    files = issue(pki, SILO, tmp_path / "node")
    assert certificate_identity(files.cert) == SILO


def test_a_certificate_without_an_identity_is_a_config_error(pki: Path, tmp_path: Path) -> None:
    # The CA certificate names no jurisfed:// URI.
    with pytest.raises(ConfigError, match=r"ca\.crt: .*subject alternative names"):
        certificate_identity(pki / "ca.crt")


def test_an_unreadable_or_garbled_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.crt does not exist"):
        certificate_identity(tmp_path / "missing.crt")
    (tmp_path / "garbled.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        certificate_identity(tmp_path / "garbled.crt")
