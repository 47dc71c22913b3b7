"""Signed checkpoints: "the log of ORIGIN had SIZE records with tree head ROOT at TIME".

A checkpoint commits its signer to the whole log up to SIZE: any later change to those
records changes the root, and a later checkpoint that does not extend this one (proved with
a consistency proof) is a fork. Signatures are Ed25519 over a domain-separated canonical
JSON body, so a checkpoint can never be replayed as some other signed message.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jurisfed.audit.events import Json, MalformedRecord, canonical_json, format_time, parse_time
from jurisfed.audit.keys import key_id
from jurisfed.audit.merkle import HASH_BYTES
from jurisfed.auth.identity import Identity
from jurisfed.errors import Unauthenticated

CHECKPOINTS_SUFFIX = ".checkpoints"
_DOMAIN = b"jurisfed-audit-checkpoint/v1\n"
_SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Checkpoint:
    origin: Identity  # the node whose log this is
    size: int
    root: bytes
    time: datetime.datetime
    key_id: str

    def body(self) -> dict[str, Json]:
        return {
            "origin": self.origin.uri,
            "size": self.size,
            "root": self.root.hex(),
            "time": format_time(self.time),
            "key_id": self.key_id,
        }

    def message(self) -> bytes:
        """The bytes that are signed."""
        return _DOMAIN + canonical_json(self.body())


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signature: bytes

    @property
    def origin(self) -> Identity:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    @property
    def time(self) -> datetime.datetime:
        return self.checkpoint.time

    @property
    def key_id(self) -> str:
        return self.checkpoint.key_id

    def verify(self, key: Ed25519PublicKey) -> bool:
        """Whether `key` is the key this checkpoint names and its signature is valid."""
        if key_id(key) != self.key_id:
            return False
        try:
            key.verify(self.signature, self.checkpoint.message())
        except InvalidSignature:
            return False
        return True

    def verify_with(self, keys: dict[str, Ed25519PublicKey]) -> None:
        """`Unauthenticated` unless one of `keys` (by key id) signed this checkpoint."""
        key = keys.get(self.key_id)
        if key is None:
            raise Unauthenticated(f"checkpoint signed by unknown key {self.key_id[:16]}")
        if not self.verify(key):
            raise Unauthenticated(f"checkpoint of {self.origin} at size {self.size} has an invalid signature")

    def to_json(self) -> dict[str, Json]:
        return {**self.checkpoint.body(), "signature": self.signature.hex()}

    def to_line(self) -> bytes:
        """Canonical JSON: the form a checkpoint travels and is stored in."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, value: Json) -> SignedCheckpoint:
        """Parse a checkpoint object; `MalformedRecord` says what is wrong with it."""
        if not isinstance(value, dict) or set(value) != {
            "origin",
            "size",
            "root",
            "time",
            "key_id",
            "signature",
        }:
            raise MalformedRecord("a checkpoint has exactly origin, size, root, time, key_id and signature")
        try:
            origin = Identity.parse(_text(value["origin"]))
            size = value["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise MalformedRecord("checkpoint size must be a non-negative integer")
            root = bytes.fromhex(_text(value["root"]))
            signature = bytes.fromhex(_text(value["signature"]))
            identifier = _text(value["key_id"])
            time = parse_time(_text(value["time"]))
        except (Unauthenticated, ValueError) as error:
            raise MalformedRecord(f"checkpoint: {error}") from None
        if len(root) != HASH_BYTES or len(signature) != _SIGNATURE_BYTES or len(identifier) != 2 * HASH_BYTES:
            raise MalformedRecord("checkpoint root, key id or signature has the wrong length")
        return cls(Checkpoint(origin, size, root, time, identifier), signature)

    @classmethod
    def from_line(cls, line: bytes) -> SignedCheckpoint:
        try:
            value = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise MalformedRecord(f"not valid JSON ({error})") from None
        signed = cls.from_json(value)
        if signed.to_line() != line:
            raise MalformedRecord("checkpoint is not in canonical form")
        return signed


def sign(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> SignedCheckpoint:
    if key_id(key.public_key()) != checkpoint.key_id:
        raise ValueError("the checkpoint names another key")
    return SignedCheckpoint(checkpoint, key.sign(checkpoint.message()))


def checkpoints_path(log_path: Path) -> Path:
    """Where the signed checkpoints of the log at `log_path` live."""
    return log_path.with_name(log_path.name + CHECKPOINTS_SUFFIX)


def _text(value: Json) -> str:
    if not isinstance(value, str):
        raise MalformedRecord("checkpoint fields origin, root, time, key_id and signature are strings")
    return value
