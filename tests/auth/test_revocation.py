"""The CA's revocation list: what `revoke` writes, and how a running server's `RevocationList` follows it.

The server side is driven with a fake monotonic clock (when to look at the file again) and a
fake wall clock (when the list goes stale), so every step is deterministic.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import threading
from pathlib import Path

import pytest
from cryptography import x509

from jurisfed.auth.identity import Identity, Tier
from jurisfed.auth.pki import create_ca, issue
from jurisfed.auth.revocation import Crl, RevocationList, publish_crl, read_crl, revoke
from jurisfed.errors import ConfigError, Unauthenticated

SILO = Identity("EU", Tier.SILO, "hospital-a")
OTHER_SILO = Identity("EU", Tier.SILO, "hospital-b")
INTERVAL_S = 1.0


class Clocks:
    """A monotonic clock for re-read intervals and a wall clock for the CRL's dates."""

    def __init__(self) -> None:
        self.monotonic_s = 0.0
        self.wall = datetime.datetime.now(datetime.UTC)

    def tick(self, seconds: float = INTERVAL_S) -> None:
        self.monotonic_s += seconds
        self.wall += datetime.timedelta(seconds=seconds)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    ca_dir = create_ca(tmp_path / "ca")
    publish_crl(ca_dir)
    return ca_dir


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def _cert(ca: Path, identity: Identity, directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issue(ca, identity, directory).cert.read_bytes())


def _list(ca: Path, clocks: Clocks) -> RevocationList:
    return RevocationList(
        ca / "ca.crt",
        ca / "crl.pem",
        check_interval_s=INTERVAL_S,
        clock=lambda: clocks.monotonic_s,
        now=lambda: clocks.wall,
    )


def _crl(ca: Path) -> Crl:
    return read_crl(ca / "crl.pem", x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()))


# --- CA side --------------------------------------------------------------------------------------


def test_a_new_revocation_list_is_empty_signed_and_numbered(ca: Path) -> None:
    crl = _crl(ca)
    assert crl.revoked == {}
    assert crl.number == 1
    assert datetime.timedelta(days=364) < crl.next_update - crl.issued_at <= datetime.timedelta(days=365)


def test_revoking_adds_the_serial_with_its_reason_and_a_higher_number(ca: Path, tmp_path: Path) -> None:
    cert = _cert(ca, SILO, tmp_path / "silo")

    revocation, new = revoke(ca, cert.serial_number, reason=x509.ReasonFlags.key_compromise)

    assert new
    crl = _crl(ca)
    assert crl.number == 2
    assert crl.revoked == {cert.serial_number: revocation}
    assert revocation.reason is x509.ReasonFlags.key_compromise
    assert "(key compromise)" in revocation.describe()


def test_revoking_twice_changes_nothing(ca: Path, tmp_path: Path) -> None:
    serial = _cert(ca, SILO, tmp_path / "silo").serial_number
    first, _ = revoke(ca, serial)
    before = (ca / "crl.pem").read_bytes()

    again, new = revoke(ca, serial, reason=x509.ReasonFlags.superseded)

    assert not new
    assert again == first
    assert (ca / "crl.pem").read_bytes() == before


def test_publishing_again_keeps_the_entries_and_moves_the_dates(ca: Path, tmp_path: Path) -> None:
    serial = _cert(ca, SILO, tmp_path / "silo").serial_number
    revoke(ca, serial)

    _, crl = publish_crl(ca, valid_days=7)

    assert set(crl.revoked) == {serial}
    assert _crl(ca).number == 3
    assert crl.next_update - crl.issued_at == datetime.timedelta(days=7)


def test_a_revocation_list_that_does_not_verify_is_never_rewritten(ca: Path, tmp_path: Path) -> None:
    foreign = create_ca(tmp_path / "foreign")
    publish_crl(foreign)
    shutil.copy(foreign / "crl.pem", ca / "crl.pem")
    before = (ca / "crl.pem").read_bytes()

    # Same CA name, another key: only the signature tells them apart.
    with pytest.raises(ConfigError, match="signature does not verify with the federation CA's key"):
        revoke(ca, 0x1234)
    with pytest.raises(ConfigError, match="signature does not verify"):
        publish_crl(ca)
    assert (ca / "crl.pem").read_bytes() == before


def test_concurrent_revocations_are_all_kept(ca: Path) -> None:
    serials = list(range(0x100, 0x110))
    threads = [threading.Thread(target=revoke, args=(ca, serial)) for serial in serials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    crl = _crl(ca)
    assert set(crl.revoked) == set(serials)
    assert crl.number == 1 + len(serials)


# --- server side ----------------------------------------------------------------------------------


def test_a_revocation_is_picked_up_without_a_restart(ca: Path, clocks: Clocks, tmp_path: Path) -> None:
    silo, other = _cert(ca, SILO, tmp_path / "silo"), _cert(ca, OTHER_SILO, tmp_path / "other")
    revocations = _list(ca, clocks)
    revocations.check(silo)

    revoke(ca, silo.serial_number)
    assert not revocations.is_revoked(silo)  # the file is looked at again after the interval only
    clocks.tick()

    with pytest.raises(
        Unauthenticated, match=rf"certificate serial {silo.serial_number:X} \({SILO}\) was revoked"
    ):
        revocations.check(silo)
    assert not revocations.is_revoked(other)


def test_start_up_refuses_a_missing_foreign_or_stale_list(ca: Path, clocks: Clocks, tmp_path: Path) -> None:
    (ca / "crl.pem").rename(tmp_path / "kept.pem")
    with pytest.raises(ConfigError, match="does not exist"):
        _list(ca, clocks)

    foreign = create_ca(tmp_path / "foreign", common_name="someone else's CA")
    publish_crl(foreign)
    shutil.copy(foreign / "crl.pem", ca / "crl.pem")
    with pytest.raises(ConfigError, match="issued by CN=someone else's CA, not the federation CA"):
        _list(ca, clocks)

    (tmp_path / "kept.pem").replace(ca / "crl.pem")
    clocks.wall += datetime.timedelta(days=366)
    with pytest.raises(ConfigError, match="expired on"):
        _list(ca, clocks)


@pytest.mark.parametrize("damage", ["deleted", "garbage", "signed by another CA", "rolled back", "stale"])
def test_a_list_that_goes_bad_refuses_everyone_until_fixed_and_says_so_once(
    damage: str, ca: Path, clocks: Clocks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    silo = _cert(ca, SILO, tmp_path / "silo")
    older = tmp_path / "older.pem"
    shutil.copy(ca / "crl.pem", older)
    revoke(ca, 0xDEAD)  # number 2
    revocations = _list(ca, clocks)
    good = (ca / "crl.pem").read_bytes()
    assert not revocations.is_revoked(silo)

    if damage == "deleted":
        (ca / "crl.pem").unlink()
    elif damage == "garbage":
        (ca / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\nnot a list\n-----END X509 CRL-----\n")
    elif damage == "signed by another CA":
        foreign = create_ca(tmp_path / "foreign")
        publish_crl(foreign)
        shutil.copy(foreign / "crl.pem", ca / "crl.pem")
    elif damage == "rolled back":
        shutil.copy(older, ca / "crl.pem")  # validly signed, but number 1 < 2: the revocation would vanish
    else:
        clocks.wall += datetime.timedelta(days=366)
    caplog.set_level(logging.ERROR, logger="jurisfed.auth.revocation")
    for _ in range(3):
        clocks.tick()
        with pytest.raises(Unauthenticated, match="cannot check certificate revocation"):
            revocations.check(silo)
    assert len(caplog.records) == 1
    assert "refusing every certificate" in caplog.records[0].getMessage()

    (ca / "crl.pem").write_bytes(good)
    if damage == "stale":
        publish_crl(ca, valid_days=400)
    clocks.tick()
    assert not revocations.is_revoked(silo)
