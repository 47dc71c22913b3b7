"""Approvals: Ed25519 signatures over a policy's canonical form, saying who approved it and when.

An approval signs the bytes ``jurisfed-policy-approval/v1\\n`` followed by the canonical JSON
of ``{"approval": {approver, approved_at, key_id, public_key}, "policy": <canonical policy>}``:
the approver's name and the time are signed too, so neither can be changed afterwards.
Approvals live in the policy file's `approvals:` block, which is not part of the canonical
form; `jurisfed policy sign` rewrites that block and nothing else in the file.

Keys are Ed25519 PEM files: a private key (PKCS #8, mode 0600) per approver, and public keys
(SubjectPublicKeyInfo) that tiers trust. A key's id is ``ed25519:`` and the first 16 hex
digits of the SHA-256 of its 32 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jurisfed.policy.canonical import APPROVALS_KEY, canonical_json
from jurisfed.policy.errors import PolicyError, PolicySignatureError
from jurisfed.policy.model import Approval, Policy

__all__ = [
    "ApprovalCheck",
    "ApprovalStatus",
    "Signed",
    "TrustedKeys",
    "approve_file",
    "check_approvals",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "sign_policy",
    "verify_approvals",
    "write_approvals",
]

DOMAIN = b"jurisfed-policy-approval/v1\n"
_PRIVATE_MODE = 0o600


def key_id(public_key: Ed25519PublicKey) -> str:
    return "ed25519:" + hashlib.sha256(_raw(public_key)).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKeys:
    """The approvers' public keys a node trusts, by key id."""

    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def of(cls, public_keys: Iterable[Ed25519PublicKey]) -> TrustedKeys:
        return cls({key_id(key): key for key in public_keys})

    def __contains__(self, identifier: object) -> bool:
        return identifier in self.keys

    def __len__(self) -> int:
        return len(self.keys)


class ApprovalStatus(enum.Enum):
    VALID = "valid"  # signed by a trusted key, over exactly this version
    INVALID = "invalid"  # the signature does not match this version: altered after approval
    UNTRUSTED = "untrusted"  # the signature is sound, but its key is not among the trusted ones


@dataclass(frozen=True)
class ApprovalCheck:
    approval: Approval
    status: ApprovalStatus
    detail: str


def check_approvals(policy: Policy, trusted: TrustedKeys) -> tuple[ApprovalCheck, ...]:
    """Every approval of `policy`, judged against `trusted`."""
    return tuple(_check(policy, approval, trusted) for approval in policy.approvals)


def verify_approvals(policy: Policy, trusted: TrustedKeys, *, source: str) -> tuple[Approval, ...]:
    """The valid approvals; PolicySignatureError unless at least one exists and none is invalid."""
    checks = check_approvals(policy, trusted)
    invalid = [check for check in checks if check.status is ApprovalStatus.INVALID]
    if invalid:
        listing = "; ".join(f"{c.approval.approver} ({c.approval.key_id}): {c.detail}" for c in invalid)
        raise PolicySignatureError(
            f"policy {source} ({policy.label}) was changed after it was approved, or its approvals were "
            f"edited: {listing}. Refusing to use it"
        )
    valid = tuple(check.approval for check in checks if check.status is ApprovalStatus.VALID)
    if not valid:
        if not policy.approvals:
            reason = "it is unsigned (no approvals)"
        else:
            signers = ", ".join(f"{a.approver} ({a.key_id})" for a in policy.approvals)
            reason = f"it is approved only by keys this node does not trust: {signers}"
        trusted_ids = ", ".join(sorted(trusted.keys)) or "none configured"
        raise PolicySignatureError(
            f"policy {source} ({policy.label}) is not approved by a trusted key: {reason}. "
            f"Trusted keys: {trusted_ids}"
        )
    return valid


def sign_policy(
    policy: Policy,
    private_key: Ed25519PrivateKey,
    approver: str,
    approved_at: datetime.datetime | None = None,
) -> Approval:
    """A new approval of `policy` (its canonical form) by `approver`, holder of `private_key`."""
    if not approver.strip():
        raise PolicyError("an approval needs the approver's name")
    when = (approved_at or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    public = private_key.public_key()
    unsigned = Approval(
        approver=approver.strip(),
        approved_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        key_id=key_id(public),
        public_key=base64.b64encode(_raw(public)).decode("ascii"),
        signature="",
    )
    signature = private_key.sign(_message(policy, unsigned))
    return Approval(**{**unsigned.__dict__, "signature": base64.b64encode(signature).decode("ascii")})


def _message(policy: Policy, approval: Approval) -> bytes:
    signed = canonical_json(
        {
            "approver": approval.approver,
            "approved_at": approval.approved_at,
            "key_id": approval.key_id,
            "public_key": approval.public_key,
        }
    )
    # The canonical JSON of {"approval": ..., "policy": ...}: keys sorted, so approval comes first.
    return DOMAIN + b'{"approval":' + signed + b',"policy":' + policy.canonical + b"}"


def _check(policy: Policy, approval: Approval, trusted: TrustedKeys) -> ApprovalCheck:
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(approval.public_key, validate=True))
        signature = base64.b64decode(approval.signature, validate=True)
    except (ValueError, binascii.Error) as error:
        return ApprovalCheck(approval, ApprovalStatus.INVALID, f"malformed key or signature ({error})")
    if key_id(embedded) != approval.key_id:
        return ApprovalCheck(approval, ApprovalStatus.INVALID, "key id does not match the public key")
    key = trusted.keys.get(approval.key_id, embedded)
    if _raw(key) != _raw(embedded):
        return ApprovalCheck(approval, ApprovalStatus.INVALID, "public key differs from the trusted key")
    try:
        key.verify(signature, _message(policy, approval))
    except InvalidSignature:
        return ApprovalCheck(
            approval, ApprovalStatus.INVALID, "signature does not match this version of the policy"
        )
    if approval.key_id not in trusted:
        return ApprovalCheck(approval, ApprovalStatus.UNTRUSTED, "signature sound, key not trusted")
    return ApprovalCheck(approval, ApprovalStatus.VALID, "signature valid, key trusted")


# --- writing approvals into the file ---------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    approval: Approval
    dropped: tuple[Approval, ...]  # earlier approvals of another version, now removed


def approve_file(
    path: Path,
    private_key: Ed25519PrivateKey,
    approver: str,
    approved_at: datetime.datetime | None = None,
) -> Signed:
    """Sign the policy in `path` and write the approval into it (what `jurisfed policy sign` does).

    An earlier approval by the same key is replaced; approvals whose signatures no longer match
    the text are dropped, since they approved another version. The file is read back and
    checked; if the new approval does not verify, the file is restored and PolicyError raised.
    """
    from jurisfed.policy.loader import read_policy  # noqa: PLC0415 - the loader imports this module

    policy = read_policy(path)
    approval = sign_policy(policy, private_key, approver, approved_at)
    kept: list[Approval] = []
    dropped: list[Approval] = []
    for check in check_approvals(policy, TrustedKeys({})):
        if check.approval.key_id == approval.key_id:
            continue
        (dropped if check.status is ApprovalStatus.INVALID else kept).append(check.approval)
    original = path.read_text(encoding="utf-8")
    write_approvals(path, [*kept, approval])
    try:
        verify_approvals(read_policy(path), TrustedKeys.of([private_key.public_key()]), source=str(path))
    except PolicyError:
        path.write_text(original, encoding="utf-8")
        raise
    return Signed(approval, tuple(dropped))


_TOP_LEVEL_KEY = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)


def write_approvals(path: Path, approvals: Iterable[Approval]) -> None:
    """Replace the `approvals:` block of the policy file in `path`, leaving every other line as is.

    The block is written last in the file. A reviewer's layout, comments included, survives.
    """
    text = path.read_text(encoding="utf-8")
    rest = _without_approvals_block(text).rstrip("\n")
    listed = [
        {
            "approver": a.approver,
            "approved_at": a.approved_at,
            "key_id": a.key_id,
            "public_key": a.public_key,
            "signature": a.signature,
        }
        for a in approvals
    ]
    block = ""
    if listed:
        block = (
            "\n\n# Written by `jurisfed policy sign`: who approved exactly the text above, and when.\n"
            "# Not part of what is signed; any change above this block invalidates these signatures.\n"
            + yaml.safe_dump({APPROVALS_KEY: listed}, sort_keys=False, width=200)
        )
    path.write_text(rest + block if block else rest + "\n", encoding="utf-8")


def _without_approvals_block(text: str) -> str:
    """`text` minus its top-level `approvals:` block and the comment lines just above it."""
    starts = [(m.start(), m.group("key")) for m in _TOP_LEVEL_KEY.finditer(text)]
    for index, (start, key) in enumerate(starts):
        if key != APPROVALS_KEY:
            continue
        end = starts[index + 1][0] if index + 1 < len(starts) else len(text)
        head = text[:start].rstrip("\n").split("\n")
        while head and head[-1].startswith("#"):
            head.pop()
        tail = text[end:]
        return "\n".join(head) + ("\n" + tail if tail else "\n")
    return text


# --- keys -------------------------------------------------------------------------------------


def generate_key_pair(private_path: Path, public_path: Path, passphrase: bytes | None = None) -> str:
    """Write a new approver key pair (private key mode 0600, never overwritten); return its key id."""
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in (private_path, public_path):
        if path.exists():
            raise PolicyError(f"{path} already exists; refusing to overwrite a key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(key.public_key())


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PolicyError(f"cannot read private key {path}: {error.strerror or error}") from error
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError) as error:
        raise PolicyError(f"{path} is not a usable PEM private key: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyError(f"{path} holds a {type(key).__name__}; approvals need an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PolicyError(f"cannot read public key {path}: {error.strerror or error}") from error
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise PolicyError(f"{path} is not a PEM public key: {error}") from error
    if not isinstance(key, Ed25519PublicKey):
        raise PolicyError(f"{path} holds a {type(key).__name__}; approvals need an Ed25519 key")
    return key


def load_trusted_keys(paths: Iterable[Path]) -> TrustedKeys:
    """Public keys from PEM files, or from every *.pem file of a directory given instead."""
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.pem")) if path.is_dir() else [path]
    if not files:
        raise PolicyError(
            "no trusted approver keys given: a policy can only be used when a trusted key signed it"
        )
    return TrustedKeys.of(load_public_key(file) for file in files)


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
