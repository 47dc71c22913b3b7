"""`jurisfed pki ...` end to end, in process: the files each command writes, their permissions,
what it prints (never a private key) and how it refuses bad input (exit 2)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from jurisfed.auth.identity import Identity, Tier, identity_from_certificate
from jurisfed.auth.revocation import Crl, read_crl
from jurisfed.auth.token_keys import KeySet
from jurisfed.auth.tokens import Role
from jurisfed.cli import main

SILO = "jurisfed://EU/silo/hospital-a"
COMMANDS = ["init-ca", "issue", "request", "sign", "rotate", "token-key", "revoke", "crl", "show"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _crl(ca: Path) -> Crl:
    return read_crl(ca / "crl.pem", _cert(ca / "ca.crt"))


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `jurisfed pki ARGV`; no output ever holds a private key."""
    status = main(["pki", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "PRIVATE KEY" not in out + err
    return status, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """stderr of a command line argparse refuses (exit 2)."""
    with pytest.raises(SystemExit) as caught:
        main(["pki", *map(str, argv)])
    assert caught.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, "init-ca", "--out", tmp_path / "ca")[0] == 0
    return tmp_path / "ca"


# --- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["pki", command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: jurisfed pki {command}" in out
    assert len(out.split("\n\n")[1]) > 100  # a description, not just the usage line


def test_issue_help_says_production_keys_are_made_on_the_node(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pki", "issue", "--help"])
    assert "make the key on the node" in " ".join(capsys.readouterr().out.split())


# --- the CA ---------------------------------------------------------------------------------------


def test_init_ca_writes_a_private_ca_and_an_empty_signed_revocation_list(
    ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _mode(ca) == 0o700
    assert _mode(ca / "ca.key") == 0o600
    assert _cert(ca / "ca.crt").extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _crl(ca).revoked == {}

    before = (ca / "ca.key").read_bytes()
    status, _, err = run(capsys, "init-ca", "--out", ca)
    assert status == 2
    assert "refusing to overwrite a CA" in err
    assert (ca / "ca.key").read_bytes() == before


# --- issue ----------------------------------------------------------------------------------------


def test_issue_writes_an_owner_only_key_and_a_certificate_naming_the_identity(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    names = ["--dns", "a.eu.example", "--ip", "10.0.0.7"]
    status, out, _ = run(
        capsys, "issue", "--ca", ca, "--identity", SILO, "--out", node, *names, "--days", "30"
    )

    assert status == 0
    assert (_mode(node), _mode(node / "tls.key")) == (0o700, 0o600)
    cert = _cert(node / "tls.crt")
    cert.verify_directly_issued_by(_cert(ca / "ca.crt"))
    assert identity_from_certificate(cert) == Identity("EU", Tier.SILO, "hospital-a")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.eu.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert _public_der(_key(node / "tls.key").public_key()) == _public_der(cert.public_key())
    assert f"{cert.serial_number:X}" in out
    assert "make the key on the node" in out
    assert (node / "ca.crt").read_bytes() == (ca / "ca.crt").read_bytes()


def test_issue_refuses_to_replace_a_certificate(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "issue", "--ca", ca, "--identity", SILO, "--out", tmp_path / "node")[0] == 0
    key = (tmp_path / "node" / "tls.key").read_bytes()

    status, _, err = run(capsys, "issue", "--ca", ca, "--identity", SILO, "--out", tmp_path / "node")

    assert status == 2
    assert "already exists; use `jurisfed pki rotate`" in err
    assert (tmp_path / "node" / "tls.key").read_bytes() == key


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--identity", "jurisfed://eu/silo/hospital-a", "must be 2-16 uppercase letters"),
        ("--identity", "https://EU/silo/hospital-a", "is not of the form jurisfed://"),
        ("--identity", "jurisfed://EU/janitor/bob", "unknown tier 'janitor'"),
        ("--days", "0", "must be at least 1 day"),
        ("--days", "soon", "not a whole number of days"),
    ],
)
def test_issue_refuses_bad_arguments_with_usage_errors(
    option: str, value: str, message: str, ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv: dict[str, str | Path] = {"--ca": ca, "--identity": SILO, "--out": tmp_path / "node", option: value}
    err = usage_error(capsys, "issue", *[part for pair in argv.items() for part in pair])
    assert message in err
    assert not (tmp_path / "node").exists()


def test_issue_names_what_is_wrong_with_the_ca_or_the_address(
    tmp_path: Path, ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(
        capsys, "issue", "--ca", tmp_path / "nowhere", "--identity", SILO, "--out", tmp_path / "n"
    )
    assert status == 2
    assert f"jurisfed pki issue: CA certificate file {tmp_path / 'nowhere' / 'ca.crt'} does not exist" in err

    status, _, err = run(
        capsys, "issue", "--ca", ca, "--identity", SILO, "--out", tmp_path / "n", "--ip", "10.0.0"
    )
    assert status == 2
    assert "invalid IP address" in err
    assert not (tmp_path / "n" / "tls.key").exists()


# --- request and sign: the key never leaves the node ----------------------------------------------


def test_a_node_requests_and_the_ca_signs_without_the_key_moving(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    status, out, _ = run(capsys, "request", "--identity", SILO, "--out", node, "--dns", "a.eu.example")
    assert status == 0
    assert _mode(node / "tls.key") == 0o600
    assert b"PRIVATE" not in (node / "tls.csr").read_bytes()

    status, out, _ = run(
        capsys,
        "sign",
        "--ca",
        ca,
        "--csr",
        node / "tls.csr",
        "--identity",
        SILO,
        "--out",
        tmp_path / "tls.crt",
    )

    assert status == 0
    cert = _cert(tmp_path / "tls.crt")
    cert.verify_directly_issued_by(_cert(ca / "ca.crt"))
    assert _public_der(cert.public_key()) == _public_der(_key(node / "tls.key").public_key())
    assert identity_from_certificate(cert).uri == SILO
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.eu.example"]
    assert f"{cert.serial_number:X}" in out


def test_the_ca_refuses_a_request_for_someone_else_or_a_tampered_one(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "request", "--identity", "jurisfed://EU/operator/mallory", "--out", tmp_path / "node")
    csr = tmp_path / "node" / "tls.csr"

    status, _, err = run(
        capsys, "sign", "--ca", ca, "--csr", csr, "--identity", SILO, "--out", tmp_path / "x.crt"
    )
    assert status == 2
    assert f"asks for jurisfed://EU/operator/mallory, not {SILO}; refusing to sign it" in err

    request = x509.load_pem_x509_csr(csr.read_bytes())
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # flip a bit of the signature
    csr.write_bytes(x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM))
    status, _, err = run(
        capsys,
        "sign",
        "--ca",
        ca,
        "--csr",
        csr,
        "--identity",
        "jurisfed://EU/operator/mallory",
        "--out",
        tmp_path / "x",
    )
    assert status == 2
    assert "signature does not verify" in err
    assert not (tmp_path / "x.crt").exists()
    assert not (tmp_path / "x").exists()


def test_request_refuses_to_replace_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "request", "--identity", SILO, "--out", tmp_path / "node")
    key = (tmp_path / "node" / "tls.key").read_bytes()
    status, _, err = run(capsys, "request", "--identity", SILO, "--out", tmp_path / "node")
    assert status == 2
    assert "refusing to overwrite" in err
    assert (tmp_path / "node" / "tls.key").read_bytes() == key


# --- rotate ---------------------------------------------------------------------------------------


def test_rotate_reissues_with_a_new_key_and_leaves_the_old_certificate_valid(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    run(
        capsys,
        "issue",
        "--ca",
        ca,
        "--identity",
        SILO,
        "--out",
        node,
        "--dns",
        "a.eu.example",
        "--ip",
        "10.0.0.7",
    )
    old_cert, old_key = _cert(node / "tls.crt"), (node / "tls.key").read_bytes()

    status, out, _ = run(capsys, "rotate", "--ca", ca, "--node", node)

    assert status == 0
    new_cert = _cert(node / "tls.crt")
    assert (node / "tls.key").read_bytes() != old_key
    assert _mode(node / "tls.key") == 0o600
    assert _public_der(new_cert.public_key()) == _public_der(_key(node / "tls.key").public_key())
    assert new_cert.serial_number != old_cert.serial_number
    assert identity_from_certificate(new_cert) == identity_from_certificate(old_cert)
    assert new_cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ) == old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # The old certificate is not revoked; the command says how to retire it.
    assert old_cert.serial_number not in _crl(ca).revoked
    hint = f"jurisfed pki revoke --ca {ca} --serial {old_cert.serial_number:X} --reason superseded"
    assert hint in out

    assert run(capsys, *hint.split()[2:])[0] == 0
    assert _crl(ca).revoked[old_cert.serial_number].reason is x509.ReasonFlags.superseded
    assert new_cert.serial_number not in _crl(ca).revoked


def test_rotate_refuses_a_certificate_of_another_ca(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "init-ca", "--out", tmp_path / "other-ca")
    run(capsys, "issue", "--ca", tmp_path / "other-ca", "--identity", SILO, "--out", tmp_path / "node")
    key = (tmp_path / "node" / "tls.key").read_bytes()

    status, _, err = run(capsys, "rotate", "--ca", ca, "--node", tmp_path / "node")

    assert status == 2
    assert "was not issued by this CA" in err
    assert (tmp_path / "node" / "tls.key").read_bytes() == key


# --- token keys -----------------------------------------------------------------------------------


def test_token_key_writes_an_owner_only_key_whose_public_half_a_key_set_trusts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "token-key", "--out", tmp_path / "keys", "--kid", "hospital-a-2025-01")

    assert status == 0
    private, public = (
        tmp_path / "keys" / "hospital-a-2025-01.key",
        tmp_path / "keys" / "hospital-a-2025-01.pem",
    )
    assert _mode(private) == 0o600
    assert "token-keys/<silo|regional|operator|auditor>/hospital-a-2025-01.pem" in out
    key_set = tmp_path / "token-keys" / "silo"
    key_set.mkdir(parents=True)
    (key_set / public.name).write_bytes(public.read_bytes())
    trusted = KeySet(tmp_path / "token-keys").get("hospital-a-2025-01")
    assert trusted is not None
    assert trusted.roles == frozenset({Role.SILO})
    assert _public_der(trusted.public_key) == _public_der(_key(private).public_key())

    status, _, err = run(capsys, "token-key", "--out", tmp_path / "keys", "--kid", "hospital-a-2025-01")
    assert status == 2
    assert "refusing to overwrite a token key" in err


def test_token_key_refuses_a_key_id_that_cannot_be_a_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "must match" in usage_error(capsys, "token-key", "--out", tmp_path, "--kid", "../escape")
    assert list(tmp_path.iterdir()) == []


# --- revoke, crl, show ----------------------------------------------------------------------------


def test_revoke_adds_the_certificate_to_the_signed_list_once(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "issue", "--ca", ca, "--identity", SILO, "--out", tmp_path / "node")
    cert_path = tmp_path / "node" / "tls.crt"
    serial = _cert(cert_path).serial_number

    status, out, _ = run(capsys, "revoke", "--ca", ca, "--cert", cert_path, "--reason", "key-compromise")

    assert status == 0
    assert f"revoked {SILO} (serial {serial:X})" in out
    crl = _crl(ca)
    assert crl.revoked[serial].reason is x509.ReasonFlags.key_compromise
    assert crl.number == 2

    status, out, _ = run(capsys, "revoke", "--ca", ca, "--serial", f"{serial:x}")
    assert status == 0
    assert "was already revoked" in out
    assert _crl(ca).number == 2

    status, out, _ = run(capsys, "show", cert_path, "--ca", ca, "--crl", ca / "crl.pem")
    assert status == 0
    assert f"revoked:     serial {serial:X} revoked" in out
    assert "(key compromise)" in out


def test_revoke_refuses_a_certificate_of_another_ca_and_bad_serials(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "init-ca", "--out", tmp_path / "other-ca")
    run(capsys, "issue", "--ca", tmp_path / "other-ca", "--identity", SILO, "--out", tmp_path / "node")
    before = (ca / "crl.pem").read_bytes()

    status, _, err = run(capsys, "revoke", "--ca", ca, "--cert", tmp_path / "node" / "tls.crt")

    assert status == 2
    assert "was not issued by this CA" in err
    assert "not a hexadecimal serial" in usage_error(capsys, "revoke", "--ca", ca, "--serial", "xyz")
    assert "one of the arguments --cert --serial is required" in usage_error(capsys, "revoke", "--ca", ca)
    assert "invalid choice: 'because'" in usage_error(
        capsys, "revoke", "--ca", ca, "--serial", "1F", "--reason", "because"
    )
    assert (ca / "crl.pem").read_bytes() == before


def test_crl_publishes_the_same_entries_with_fresh_dates(
    ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "revoke", "--ca", ca, "--serial", "1F")

    status, out, _ = run(capsys, "crl", "--ca", ca, "--crl-days", "7")

    assert status == 0
    crl = _crl(ca)
    assert (crl.number, set(crl.revoked)) == (3, {0x1F})
    assert (crl.next_update - crl.issued_at).days == 7
    assert "1 revoked certificate(s)" in out


def test_show_describes_certificates_requests_and_lists_but_never_keys(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "issue", "--ca", ca, "--identity", SILO, "--out", tmp_path / "node", "--dns", "a.eu.example")
    run(capsys, "request", "--identity", SILO, "--out", tmp_path / "renewal")

    status, out, _ = run(capsys, "show", tmp_path / "node" / "tls.crt", "--ca", ca)
    assert status == 0
    assert f"identity:    {SILO}" in out
    assert "names:       DNS a.eu.example" in out
    assert "(current)" in out
    assert "issued by:   this CA" in out

    assert f"asks for:    {SILO}" in run(capsys, "show", tmp_path / "renewal" / "tls.csr")[1]
    assert "number 1" in run(capsys, "show", ca / "crl.pem", "--ca", ca / "ca.crt")[1]

    for key in (tmp_path / "node" / "tls.key", ca / "ca.key", tmp_path / "renewal" / "tls.key"):
        status, out, err = run(capsys, "show", key)
        assert status == 2
        assert "is a private key; `show` never prints keys" in err
        assert out == ""

    status, _, err = run(capsys, "show", ca / "crl.pem")
    assert status == 2
    assert "--ca is needed" in err
