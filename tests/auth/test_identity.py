"""Identity URIs: what is accepted, what is refused, and how a certificate names one."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jurisfed.auth.identity import Identity, Tier, identity_from_certificate
from jurisfed.errors import Unauthenticated


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("jurisfed://EU/silo/hospital-a", Identity("EU", Tier.SILO, "hospital-a")),
        ("jurisfed://IN/regional/in-1", Identity("IN", Tier.REGIONAL, "in-1")),
        ("jurisfed://GLOBAL/global/main", Identity("GLOBAL", Tier.GLOBAL, "main")),
        ("jurisfed://US/operator/ml-team", Identity("US", Tier.OPERATOR, "ml-team")),
        ("jurisfed://X9/silo/7", Identity("X9", Tier.SILO, "7")),
        ("jurisfed://ABCDEFGHIJKLMNOP/silo/a", Identity("ABCDEFGHIJKLMNOP", Tier.SILO, "a")),
        ("jurisfed://EU/silo/" + "a" * 63, Identity("EU", Tier.SILO, "a" * 63)),
    ],
)
def test_parse_accepts_well_formed_identities(uri: str, expected: Identity) -> None:
    identity = Identity.parse(uri)
    assert identity == expected
    assert identity.uri == uri
    assert str(identity) == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "not of the form"),
        ("jurisfed://EU/silo", "not of the form"),
        ("jurisfed://EU/silo/hospital-a/extra", "not of the form"),
        ("https://EU/silo/hospital-a", "not of the form"),
        ("JURISFED://EU/silo/hospital-a", "not of the form"),
        (" jurisfed://EU/silo/hospital-a", "not of the form"),
        ("jurisfed:///EU/silo/hospital-a", "not of the form"),
        ("jurisfed://eu/silo/hospital-a", "jurisdiction"),
        ("jurisfed://E/silo/hospital-a", "jurisdiction"),
        ("jurisfed://ABCDEFGHIJKLMNOPQ/silo/hospital-a", "jurisdiction"),
        ("jurisfed://E-U/silo/hospital-a", "jurisdiction"),
        ("jurisfed://user@EU/silo/hospital-a", "jurisdiction"),
        ("jurisfed://EU:443/silo/hospital-a", "jurisdiction"),
        ("jurisfed:///silo/hospital-a", "jurisdiction"),
        ("jurisfed://EU/Silo/hospital-a", "unknown tier"),
        ("jurisfed://EU/trainer/hospital-a", "unknown tier"),
        ("jurisfed://EU//hospital-a", "unknown tier"),
        ("jurisfed://EU/silo/", "node"),
        ("jurisfed://EU/silo/Hospital-A", "node"),
        ("jurisfed://EU/silo/hospital_a", "node"),
        ("jurisfed://EU/silo/-hospital", "node"),
        ("jurisfed://EU/silo/hospital-", "node"),
        ("jurisfed://EU/silo/" + "a" * 64, "node"),
        ("jurisfed://EU/silo/hospital-a\n", "node"),
        ("jurisfed://EU/silo/hospital-a?role=admin", "node"),
        ("jurisfed://EU/silo/hospital-a#x", "node"),
        ("jurisfed://EU/silo/hospital%2Da", "node"),
    ],
)
def test_parse_refuses_anything_else(uri: str, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason) as caught:
        Identity.parse(uri)
    assert repr(uri) in str(caught.value)


def test_constructing_an_invalid_identity_fails() -> None:
    with pytest.raises(ValueError, match="jurisdiction"):
        Identity("eu", Tier.SILO, "hospital-a")
    with pytest.raises(ValueError, match="node"):
        Identity("EU", Tier.SILO, "Hospital A")
    with pytest.raises(TypeError, match="Tier"):
        Identity("EU", "silo", "hospital-a")  # type: ignore[arg-type]


def _certificate(sans: list[x509.GeneralName] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jurisfed://EU/silo/from-cn")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_certificate_identity_comes_from_its_one_jurisfed_uri() -> None:
    cert = _certificate(
        [
            x509.DNSName("hospital-a.example"),
            x509.UniformResourceIdentifier("spiffe://example.org/ignored"),
            x509.UniformResourceIdentifier("jurisfed://EU/silo/hospital-a"),
        ]
    )
    assert identity_from_certificate(cert) == Identity("EU", Tier.SILO, "hospital-a")


@pytest.mark.parametrize(
    ("sans", "reason"),
    [
        (None, "no subject alternative names"),
        ([x509.DNSName("hospital-a.example")], "exactly one"),
        (
            [
                x509.UniformResourceIdentifier("jurisfed://EU/silo/hospital-a"),
                x509.UniformResourceIdentifier("jurisfed://EU/regional/eu-1"),
            ],
            "exactly one",
        ),
        ([x509.UniformResourceIdentifier("jurisfed://EU/admin/hospital-a")], "unknown tier"),
    ],
)
def test_certificate_without_exactly_one_valid_identity_is_refused(
    sans: list[x509.GeneralName] | None, reason: str
) -> None:
    # The common name is never a fallback: it is not an identity.
    with pytest.raises(Unauthenticated, match=reason):
        identity_from_certificate(_certificate(sans))
