"""Token key sets on disk: both layouts, what is refused at start-up, and rotation without restart."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from jurisfed.auth.token_keys import KeySet, generate_token_key, install_public_key, write_jwks
from jurisfed.auth.tokens import Role, TrustedKey
from jurisfed.errors import ConfigError


def _public() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _pem(public_key: object) -> bytes:
    assert isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- layouts --------------------------------------------------------------------------------------


def test_a_directory_trusts_each_key_for_the_role_it_sits_under(tmp_path: Path) -> None:
    silo_key, operator_key = _public(), _public()
    install_public_key(tmp_path, Role.SILO, "hospital-a-1", silo_key)
    install_public_key(tmp_path, Role.OPERATOR, "ml-team-1", operator_key)
    keys = KeySet(tmp_path)
    assert keys.kids() == {"hospital-a-1", "ml-team-1"}
    silo = keys.get("hospital-a-1")
    assert silo is not None
    assert silo.roles == {Role.SILO}
    assert _pem(silo.public_key) == _pem(silo_key)
    assert keys.get("nobody") is None


def test_one_key_under_two_role_directories_is_trusted_for_both(tmp_path: Path) -> None:
    key = _public()
    install_public_key(tmp_path, Role.OPERATOR, "ops-1", key)
    install_public_key(tmp_path, Role.AUDITOR, "ops-1", key)
    trusted = KeySet(tmp_path).get("ops-1")
    assert trusted is not None
    assert trusted.roles == {Role.OPERATOR, Role.AUDITOR}


def test_a_jwks_file_round_trips(tmp_path: Path) -> None:
    keys = [
        TrustedKey("eu-1-2025", _public(), frozenset({Role.REGIONAL})),
        TrustedKey("ops-1", _public(), frozenset({Role.OPERATOR, Role.AUDITOR})),
    ]
    path = write_jwks(tmp_path / "jwks.json", keys)
    document = json.loads(path.read_text())
    assert {entry["alg"] for entry in document["keys"]} == {"ES256"}
    loaded = KeySet(path)
    for key in keys:
        found = loaded.get(key.kid)
        assert found is not None
        assert found.roles == key.roles
        assert _pem(found.public_key) == _pem(key.public_key)


def test_hidden_and_foreign_files_are_ignored(tmp_path: Path) -> None:
    install_public_key(tmp_path, Role.SILO, "a", _public())
    (tmp_path / "silo" / ".b.pem.tmp123").write_text("half written")
    (tmp_path / "silo" / "README.txt").write_text("keys of the EU silos")
    (tmp_path / "NOTES.md").write_text("rotation schedule")
    assert KeySet(tmp_path).kids() == {"a"}


def test_generate_token_key_writes_an_owner_only_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "token.key"
    key = generate_token_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_token_key(path)


# --- refused at start-up --------------------------------------------------------------------------


def _jwk(**changes: object) -> dict[str, object]:
    """A valid JWKS entry with `changes`; a change to None removes the member."""
    entry: dict[str, object] = {
        **ECAlgorithm.to_jwk(_public(), as_dict=True),
        "kid": "k1",
        "use": "sig",
        "alg": "ES256",
        "roles": ["silo"],
    }
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def _private_jwk() -> dict[str, object]:
    private = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    return {**private, "kid": "k1", "roles": ["silo"]}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("not json", "is not JSON"),
        ('{"keys": {}}', "list 'keys'"),
        ('{"keys": []}', "holds no key"),
        ('{"keys": [7]}', "is not a JSON object"),
        ({"keys": [{"kid": "bad kid!"}]}, "'kid' must match"),
        ("private", "contains a private key"),
        ({"alg": "HS256"}, "only signature keys for ES256"),
        ({"use": "enc"}, "only signature keys for ES256"),
        ({"crv": "P-384"}, "curve P-256"),
        ({"kty": "RSA"}, "curve P-256"),
        ({"roles": None}, "'roles' must list"),
        ({"roles": []}, "'roles' must list"),
        ({"roles": ["admin"]}, "unknown role"),
        ({"x": "AAAA"}, "not a valid EC key"),
        ("duplicate", "appears twice"),
    ],
)
def test_an_invalid_jwks_file_is_a_config_error(document: object, reason: str, tmp_path: Path) -> None:
    if document == "private":
        text = json.dumps({"keys": [_private_jwk()]})
    elif document == "duplicate":
        text = json.dumps({"keys": [_jwk(), _jwk()]})
    elif isinstance(document, dict) and "keys" not in document:
        text = json.dumps({"keys": [_jwk(**document)]})
    else:
        text = document if isinstance(document, str) else json.dumps(document)
    path = tmp_path / "jwks.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason):
        KeySet(path)


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no key"),
        ("unknown role", "is not a role directory"),
        ("outside a role", "outside a role directory"),
        ("not a key", "is not a PEM public key"),
        ("rsa", "not an EC P-256 public key"),
        ("p384", "not an EC P-256 public key"),
        ("bad kid", "the key id must match"),
        ("kid clash", "names two different keys"),
    ],
)
def test_an_invalid_key_directory_is_a_config_error(layout: str, reason: str, tmp_path: Path) -> None:
    root = tmp_path / "keys"
    root.mkdir()
    if layout == "missing":
        root = tmp_path / "absent"
    elif layout == "unknown role":
        install_public_key(root, Role.SILO, "a", _public())
        (root / "admin").mkdir()
        (root / "admin" / "b.pem").write_bytes(_pem(_public()))
    elif layout == "outside a role":
        (root / "b.pem").write_bytes(_pem(_public()))
    elif layout in {"not a key", "rsa", "p384", "bad kid"}:
        (root / "silo").mkdir()
        name, content = "b.pem", b"garbage"
        if layout == "rsa":
            content = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
        elif layout == "p384":
            content = (
                ec.generate_private_key(ec.SECP384R1())
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
        elif layout == "bad kid":
            name, content = "-b.pem", _pem(_public())
        (root / "silo" / name).write_bytes(content)
    elif layout == "kid clash":
        install_public_key(root, Role.SILO, "a", _public())
        install_public_key(root, Role.REGIONAL, "a", _public())
    with pytest.raises(ConfigError, match=reason):
        KeySet(root)


# --- rotation -------------------------------------------------------------------------------------


def test_keys_added_and_removed_on_disk_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    install_public_key(tmp_path, Role.SILO, "old", _public())
    keys = KeySet(tmp_path, check_interval_s=0)
    assert keys.kids() == {"old"}

    install_public_key(tmp_path, Role.SILO, "new", _public())
    assert keys.kids() == {"old", "new"}

    (tmp_path / "silo" / "old.pem").unlink()
    assert keys.get("old") is None
    assert keys.kids() == {"new"}


def test_a_replaced_key_under_the_same_id_is_picked_up(tmp_path: Path) -> None:
    install_public_key(tmp_path, Role.SILO, "a", _public())
    keys = KeySet(tmp_path, check_interval_s=0)
    replacement = _public()
    install_public_key(tmp_path, Role.SILO, "a", replacement)
    found = keys.get("a")
    assert found is not None
    assert _pem(found.public_key) == _pem(replacement)


def test_changes_are_looked_for_at_most_every_check_interval(tmp_path: Path) -> None:
    install_public_key(tmp_path, Role.SILO, "old", _public())
    clock = Clock()
    keys = KeySet(tmp_path, check_interval_s=1.0, clock=clock)
    install_public_key(tmp_path, Role.SILO, "new", _public())
    clock.now = 0.5
    assert keys.get("new") is None
    clock.now = 1.0
    assert keys.get("new") is not None


def test_a_key_set_broken_while_running_trusts_nothing_until_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jwks(tmp_path / "jwks.json", [TrustedKey("k1", _public(), frozenset({Role.SILO}))])
    good = path.read_text()
    keys = KeySet(path, check_interval_s=0)
    assert keys.get("k1") is not None

    path.write_text(good[: len(good) // 2])  # a torn write
    with caplog.at_level(logging.ERROR, logger="jurisfed.auth.tokens"):
        assert keys.get("k1") is None
        assert keys.get("k1") is None
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1  # said once, not on every call
    assert "trusting no token key until fixed" in errors[0].getMessage()

    path.unlink()
    assert keys.kids() == set()

    path.write_text(good)
    assert keys.get("k1") is not None
