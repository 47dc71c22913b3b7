"""Witnessing a peer's log: hold its latest signed checkpoint, accept only checkpoints that extend it.

The regional and the global witness each other. After each checkpoint a node sends its peer
the new signed checkpoint and a consistency proof from the size the peer last witnessed; the
peer (a `WitnessBook`) checks the signature against the key it pinned for that node, checks
the proof, and stores the checkpoint durably. A log that was truncated or rewritten can then
no longer produce a checkpoint the witness accepts, and `jurisfed audit verify --witness`
shows where the log and the witnessed checkpoint part ways.

A refused checkpoint is kept as evidence next to the one it contradicts: two checkpoints signed
by the same key that cannot both be true prove that the log was forked.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jurisfed.audit.checkpoint import SignedCheckpoint
from jurisfed.audit.errors import LogForked
from jurisfed.audit.events import (
    AuditEvent,
    EventKind,
    Json,
    MalformedRecord,
    canonical_json,
    format_time,
    parse_time,
    sha256_hex,
)
from jurisfed.audit.files import AppendOnlyFile
from jurisfed.audit.keys import parse_public_keys, public_pem
from jurisfed.audit.merkle import verify_consistency
from jurisfed.audit.sink import AuditSink
from jurisfed.auth.identity import Identity
from jurisfed.errors import ConfigError, NotAllowed, Unauthenticated, WrongState


@dataclass(frozen=True)
class WitnessEntry:
    """One line of a witness file: a checkpoint the witness accepted, or a conflict it refused."""

    witness: Identity
    witnessed_at: datetime.datetime
    public_key: Ed25519PublicKey
    checkpoint: SignedCheckpoint  # accepted, or (for a conflict) the one held at the time
    conflicting: SignedCheckpoint | None = None  # the refused checkpoint
    reason: str = ""
    line: int = 0

    def to_line(self) -> bytes:
        value: dict[str, Json] = {
            "type": "checkpoint" if self.conflicting is None else "conflict",
            "witness": self.witness.uri,
            "witnessed_at": format_time(self.witnessed_at),
            "public_key": public_pem(self.public_key).decode(),
            "checkpoint": self.checkpoint.to_json(),
        }
        if self.conflicting is not None:
            value["presented"] = self.conflicting.to_json()
            value["reason"] = self.reason
        return canonical_json(value)

    @classmethod
    def from_line(cls, line: bytes, number: int) -> WitnessEntry:
        try:
            value = json.loads(line)
            keys = parse_public_keys(value["public_key"].encode())
            conflict = value["type"] == "conflict"
            return cls(
                witness=Identity.parse(value["witness"]),
                witnessed_at=parse_time(value["witnessed_at"]),
                public_key=keys[0],
                checkpoint=SignedCheckpoint.from_json(value["checkpoint"]),
                conflicting=SignedCheckpoint.from_json(value["presented"]) if conflict else None,
                reason=str(value["reason"]) if conflict else "",
                line=number,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, ConfigError, Unauthenticated):
            raise MalformedRecord(f"line {number} is not a witness entry") from None


class WitnessBook:
    """The checkpoints this node witnessed of its peers' logs, in an append-only file."""

    def __init__(
        self,
        path: Path,
        witness: Identity,
        peers: Mapping[Identity, Ed25519PublicKey],
        *,
        sink: AuditSink | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self._witness = witness
        self._peers = dict(peers)
        self._sink = sink
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._lock = threading.Lock()
        self._file = AppendOnlyFile(path)
        self._file.drop_torn_tail()
        self._latest: dict[Identity, WitnessEntry] = {}
        for entry in _parse(self._file.read(), path):
            if entry.conflicting is None:
                self._latest[entry.checkpoint.origin] = entry

    @property
    def peers(self) -> tuple[Identity, ...]:
        """The nodes whose logs this book witnesses (their keys are pinned)."""
        return tuple(self._peers)

    def latest(self, origin: Identity) -> SignedCheckpoint | None:
        with self._lock:
            entry = self._latest.get(origin)
            return None if entry is None else entry.checkpoint

    def witnessed_size(self, origin: Identity) -> int:
        """The size the peer's next consistency proof must start from."""
        held = self.latest(origin)
        return 0 if held is None else held.size

    def observe(self, signed: SignedCheckpoint, old_size: int, proof: Sequence[bytes]) -> SignedCheckpoint:
        """Accept `signed` if it extends what is held (proof from `old_size`); returns what is held now.

        `NotAllowed` for a node that is not a peer, `Unauthenticated` for a bad signature,
        `WrongState` when `old_size` is not the witnessed size (nothing is recorded), and
        `LogForked` when the checkpoint contradicts the witnessed one (the conflict is recorded).
        """
        origin = signed.origin
        key = self._peers.get(origin)
        if key is None:
            raise NotAllowed(f"{origin} is not a peer whose log this node witnesses")
        if not signed.verify(key):
            raise Unauthenticated(f"checkpoint of {origin} is not signed by the key pinned for it")
        with self._lock:
            entry = self._latest.get(origin)
            held = None if entry is None else entry.checkpoint
            held_size = 0 if held is None else held.size
            if old_size != held_size:
                raise WrongState(f"the proof must start at the witnessed size {held_size}, not {old_size}")
            if held is None:
                return self._accept(signed, key)
            if signed.size == held.size and signed.root == held.root:
                return held
            if signed.size < held.size:
                reason = (
                    f"the log shrank from {held.size} to {signed.size} records (truncated or rolled back)"
                )
            elif signed.size == held.size:
                reason = f"two different tree heads for the same {held.size} records"
            elif not verify_consistency(held.size, signed.size, held.root, signed.root, proof):
                reason = (
                    f"the {signed.size} records do not extend the {held.size} witnessed "
                    "(invalid consistency proof)"
                )
            else:
                return self._accept(signed, key)
            self._conflict(held, signed, key, reason)
        raise LogForked(f"the audit log of {origin} was forked: {reason}")

    def close(self) -> None:
        self._file.close()

    def _accept(self, signed: SignedCheckpoint, key: Ed25519PublicKey) -> SignedCheckpoint:
        entry = WitnessEntry(self._witness, self._clock(), key, signed)
        self._file.append_line(entry.to_line())
        self._latest[signed.origin] = entry
        if self._sink is not None:
            self._sink.record(
                AuditEvent(
                    EventKind.WITNESSED_CHECKPOINT,
                    actor=self._witness,
                    jurisdiction=signed.origin.jurisdiction,
                    subject=signed.origin,
                    digests={"checkpoint": sha256_hex(signed.to_line()), "root": signed.root.hex()},
                    details={"size": signed.size},
                )
            )
        return signed

    def _conflict(
        self, held: SignedCheckpoint, presented: SignedCheckpoint, key: Ed25519PublicKey, reason: str
    ) -> None:
        entry = WitnessEntry(self._witness, self._clock(), key, held, presented, reason)
        self._file.append_line(entry.to_line())
        if self._sink is not None:
            self._sink.record(
                AuditEvent(
                    EventKind.WITNESS_CONFLICT,
                    actor=self._witness,
                    jurisdiction=presented.origin.jurisdiction,
                    subject=presented.origin,
                    digests={
                        "held": sha256_hex(held.to_line()),
                        "presented": sha256_hex(presented.to_line()),
                    },
                    details={"held_size": held.size, "presented_size": presented.size, "reason": reason},
                )
            )


def read_witness_file(path: Path) -> list[WitnessEntry]:
    """Every complete entry of a witness file (an interrupted last append is ignored)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"witness file {path} cannot be read: {error.strerror}") from None
    return _parse(data[: data.rfind(b"\n") + 1], path)


def _parse(data: bytes, path: Path) -> list[WitnessEntry]:
    entries = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            entries.append(WitnessEntry.from_line(line, number))
        except MalformedRecord as error:
            raise ConfigError(f"witness file {path}: {error}") from None
    return entries
