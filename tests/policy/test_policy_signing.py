"""Approvals: a tier runs only under a policy a trusted key signed, exactly as it was signed."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.policy import PolicyError, PolicySignatureError, load_policy
from jurisfed.policy.loader import read_policy
from jurisfed.policy.signing import (
    ApprovalStatus,
    TrustedKeys,
    approve_file,
    check_approvals,
    generate_key_pair,
    load_private_key,
    load_trusted_keys,
    sign_policy,
    write_approvals,
)

TODAY = datetime.date(2026, 11, 22)


@pytest.fixture
def approver(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "legal.key.pem", tmp_path / "trusted" / "legal.pem"
    generate_key_pair(private, public)
    return private, public


@pytest.fixture
def draft(tmp_path: Path, conditions_text: str) -> Path:
    path = tmp_path / "eu.yaml"
    path.write_text("# EU policy, reviewed by legal\n" + conditions_text)
    return path


def sign(path: Path, private: Path, name: str = "A. Jones, DPO") -> None:
    approve_file(path, load_private_key(private), name)


def test_keygen_writes_a_private_key_only_its_owner_can_read(approver: tuple[Path, Path]) -> None:
    private, public = approver
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(PolicyError, match="refusing to overwrite"):
        generate_key_pair(private, public.with_name("other.pem"))


def test_a_signed_policy_loads(draft: Path, approver: tuple[Path, Path]) -> None:
    private, public = approver
    sign(draft, private)
    policy = load_policy(draft, load_trusted_keys([public.parent]), today=TODAY)
    assert [a.approver for a in policy.approvals] == ["A. Jones, DPO"]
    assert policy.approvals[0].approved_at.endswith("Z")


def test_signing_rewrites_only_the_approvals_block(draft: Path, approver: tuple[Path, Path]) -> None:
    before = draft.read_text()
    sign(draft, approver[0])
    sign(draft, approver[0], "A. Jones, DPO, again")
    after = draft.read_text()
    assert after.startswith(before.rstrip("\n"))
    assert after.count("approvals:") == 1
    assert after.count("approver:") == 1  # the same key's approval is replaced
    assert "A. Jones, DPO, again" in after


def test_approvals_of_an_earlier_version_are_dropped_on_signing(
    draft: Path, approver: tuple[Path, Path], tmp_path: Path
) -> None:
    other_private, other_public = tmp_path / "o.key.pem", tmp_path / "trusted" / "other.pem"
    generate_key_pair(other_private, other_public)
    sign(draft, approver[0], "First")
    sign(draft, other_private, "Second")
    assert [a.approver for a in read_policy(draft).approvals] == ["First", "Second"]
    draft.write_text(draft.read_text().replace("min_cohort_silos: 5", "min_cohort_silos: 6"))
    signed = approve_file(draft, load_private_key(other_private), "Second, again")
    assert [a.approver for a in signed.dropped] == ["First"]
    policy = load_policy(draft, load_trusted_keys([other_public.parent]), today=TODAY)
    assert [a.approver for a in policy.approvals] == ["Second, again"]


def test_an_unsigned_policy_is_refused(draft: Path, approver: tuple[Path, Path]) -> None:
    with pytest.raises(PolicySignatureError, match=r"is unsigned \(no approvals\)"):
        load_policy(draft, load_trusted_keys([approver[1]]), today=TODAY)


def test_a_policy_changed_after_approval_is_refused(draft: Path, approver: tuple[Path, Path]) -> None:
    sign(draft, approver[0])
    draft.write_text(draft.read_text().replace("min_cohort_silos: 5", "min_cohort_silos: 1"))
    with pytest.raises(PolicySignatureError, match="changed after it was approved") as caught:
        load_policy(draft, load_trusted_keys([approver[1]]), today=TODAY)
    assert "signature does not match this version" in str(caught.value)


def test_an_edited_approval_is_refused(draft: Path, approver: tuple[Path, Path]) -> None:
    sign(draft, approver[0])
    draft.write_text(draft.read_text().replace("A. Jones, DPO", "The Board"))
    with pytest.raises(PolicySignatureError, match="changed after it was approved"):
        load_policy(draft, load_trusted_keys([approver[1]]), today=TODAY)


def test_a_comment_or_new_layout_keeps_the_approval(draft: Path, approver: tuple[Path, Path]) -> None:
    sign(draft, approver[0])
    draft.write_text(
        "# a reviewer's note\n"
        + draft.read_text().replace("{min_cohort_silos: 5}", "{ min_cohort_silos:  5 }")
    )
    load_policy(draft, load_trusted_keys([approver[1]]), today=TODAY)


def test_a_policy_signed_only_by_a_stranger_is_refused(
    draft: Path, approver: tuple[Path, Path], tmp_path: Path
) -> None:
    stranger_private, stranger_public = tmp_path / "s.key.pem", tmp_path / "s.pem"
    generate_key_pair(stranger_private, stranger_public)
    sign(draft, stranger_private, "Somebody")
    with pytest.raises(
        PolicySignatureError, match="approved only by keys this node does not trust: Somebody"
    ):
        load_policy(draft, load_trusted_keys([approver[1]]), today=TODAY)
    checks = check_approvals(read_policy(draft), load_trusted_keys([approver[1]]))
    assert [c.status for c in checks] == [ApprovalStatus.UNTRUSTED]


def test_a_stranger_cannot_pass_off_a_signature_under_a_trusted_key_id(
    draft: Path, approver: tuple[Path, Path]
) -> None:
    stranger = Ed25519PrivateKey.generate()
    forged = sign_policy(read_policy(draft), stranger, "Forger")
    trusted = load_trusted_keys([approver[1]])
    [trusted_id] = trusted.keys
    write_approvals(draft, [forged.__class__(**{**forged.__dict__, "key_id": trusted_id})])
    with pytest.raises(PolicySignatureError, match="key id does not match the public key"):
        load_policy(draft, trusted, today=TODAY)


def test_a_policy_not_yet_in_force_is_refused(draft: Path, approver: tuple[Path, Path]) -> None:
    sign(draft, approver[0])
    with pytest.raises(PolicyError, match="takes effect on 2026-01-01; it is not in force on 2025-12-31"):
        load_policy(draft, load_trusted_keys([approver[1]]), today=datetime.date(2025, 12, 31))


def test_trusted_keys_must_be_given_and_be_public_ed25519_keys(
    approver: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(PolicyError, match="no trusted approver keys"):
        load_trusted_keys([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="no trusted approver keys"):
        load_trusted_keys([tmp_path / "empty"])
    with pytest.raises(PolicyError, match="is not a PEM public key"):
        load_trusted_keys([approver[0]])
    with pytest.raises(PolicyError, match="cannot read public key"):
        load_trusted_keys([tmp_path / "missing.pem"])
    assert len(TrustedKeys.of([])) == 0


def test_a_passphrase_protects_the_private_key(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_key_pair(private, public, passphrase=b"correct horse")
    assert load_private_key(private, b"correct horse")
    with pytest.raises(PolicyError, match="not a usable PEM private key"):
        load_private_key(private)
    with pytest.raises(PolicyError, match="not a usable PEM private key"):
        load_private_key(private, b"wrong")


def test_an_approval_needs_a_name(draft: Path, approver: tuple[Path, Path]) -> None:
    with pytest.raises(PolicyError, match="approver's name"):
        sign_policy(read_policy(draft), load_private_key(approver[0]), "  ")


def test_the_example_policies_are_signed_by_the_committed_demo_key(example_dir: Path) -> None:
    trusted = load_trusted_keys([example_dir / "keys"])
    for name in ("eu", "in", "us", "global"):
        policy = load_policy(example_dir / f"{name}.yaml", trusted, today=TODAY)
        assert policy.approvals


def test_no_private_key_is_committed_with_the_policies(example_dir: Path) -> None:
    for path in example_dir.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
