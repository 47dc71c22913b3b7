"""`AuditLog`: a node's tamper-evident audit log, the `AuditSink` the tiers record into.

On disk, for a log ``LOG``:

- ``LOG``: one canonical-JSON record per line, each on disk (fsync) before `record` returns;
- ``LOG.checkpoints``: signed checkpoints (size, Merkle root, time), one per line;
- ``LOG.pub``: the public key(s) that signed them (a rotated key is appended, never replaced).

A checkpoint is signed every `checkpoint_every` records or `checkpoint_interval_s` seconds
(checked when a record arrives), whenever `checkpoint()` is called (do it when a round ends),
on open and on close. Opening a log verifies it first and refuses to append to one that was
tampered with; an append a crash interrupted is cut off and the recovery is itself recorded.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit.checkpoint import Checkpoint, SignedCheckpoint, checkpoints_path, sign
from jurisfed.audit.errors import AuditIntegrityError, AuditUnavailable
from jurisfed.audit.events import GENESIS, AuditEvent, AuditRecord, EventKind, sha256_hex
from jurisfed.audit.files import AppendOnlyFile
from jurisfed.audit.keys import key_id, keys_by_id, load_public_keys, public_path, public_pem
from jurisfed.audit.merkle import MerkleTree
from jurisfed.audit.verify import Problem, Severity, check_checkpoints, scan_log
from jurisfed.auth.identity import Identity
from jurisfed.errors import ConfigError, WrongState
from jurisfed.store.files import write_atomically

DEFAULT_CHECKPOINT_EVERY = 64
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WitnessUpdate:
    """What a node sends its witness: its newest signed checkpoint and the proof it extends `old_size`."""

    checkpoint: SignedCheckpoint
    old_size: int
    proof: tuple[bytes, ...]


class AuditLog:
    """An append-only, signed, Merkle-hashed log of `AuditEvent`s. Use `AuditLog.open`."""

    def __init__(
        self,
        path: Path,
        origin: Identity,
        key: Ed25519PrivateKey,
        records: AppendOnlyFile,
        checkpoints: AppendOnlyFile,
        tree: MerkleTree,
        latest: SignedCheckpoint | None,
        *,
        checkpoint_every: int,
        checkpoint_interval_s: float,
        clock: Callable[[], datetime.datetime],
    ) -> None:
        self.path = path
        self.origin = origin
        self._key = key
        self._key_id = key_id(key.public_key())
        self._records = records
        self._checkpoints = checkpoints
        self._tree = tree
        self._previous = tree.leaf(tree.size - 1).hex() if tree.size else GENESIS
        self._latest = latest
        self._every = checkpoint_every
        self._interval = datetime.timedelta(seconds=checkpoint_interval_s)
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        origin: Identity,
        key: Ed25519PrivateKey,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> AuditLog:
        """Open (or create) the log of `origin` at `path`, signing checkpoints with `key`.

        `AuditIntegrityError` when the existing log does not verify; `ConfigError` when it
        belongs to another node or another process holds it.
        """
        if checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ConfigError("checkpoint_every must be at least 1 and checkpoint_interval_s positive")
        records = AppendOnlyFile(path)
        try:
            checkpoints = AppendOnlyFile(checkpoints_path(path))
        except BaseException:
            records.close()
            raise
        try:
            torn = records.drop_torn_tail()
            checkpoints.drop_torn_tail()
            known = load_public_keys(public_path(path)) if public_path(path).exists() else []
            own = key.public_key()
            rotated = bool(known) and key_id(own) not in keys_by_id(known)
            scan = scan_log(records.read())
            findings, matching = check_checkpoints(scan, checkpoints.read(), keys_by_id([*known, own]))
            problems = [
                f
                for f in (*scan.findings, *findings)
                if f.severity is Severity.TAMPERING and f.problem is not Problem.NO_CHECKPOINT
            ]
            if problems:
                listed = "; ".join(str(f) for f in problems[:3])
                raise AuditIntegrityError(
                    f"{path} does not verify, refusing to append to it: {listed} "
                    f"(run `jurisfed audit verify {path}`)"
                )
            if matching and matching[-1].origin != origin:
                raise ConfigError(f"{path} is the audit log of {matching[-1].origin}, not of {origin}")
            if key_id(own) not in keys_by_id(known):
                write_atomically(public_path(path), b"".join(public_pem(k) for k in [*known, own]))
        except BaseException:
            records.close()
            checkpoints.close()
            raise
        log = cls(
            path,
            origin,
            key,
            records,
            checkpoints,
            scan.tree,
            matching[-1] if matching else None,
            checkpoint_every=checkpoint_every,
            checkpoint_interval_s=checkpoint_interval_s,
            clock=clock or (lambda: datetime.datetime.now(datetime.UTC)),
        )
        log._opened(scan.tree.size, torn, rotated)
        return log

    @property
    def size(self) -> int:
        with self._lock:
            return self._tree.size

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        with self._lock:
            return self._latest

    def record(self, event: AuditEvent) -> AuditRecord:
        """Append `event`; returns once it is on disk. `AuditUnavailable` if it could not be written."""
        with self._lock:
            if self._closed:
                raise WrongState(f"the audit log {self.path} is closed")
            record = AuditRecord.seal(self._tree.size, self._clock(), self._previous, event)
            self._records.append_line(record.to_line())
            leaf = record.leaf_hash()
            self._tree.append(leaf)
            self._previous = leaf.hex()
            if self._due():
                try:
                    self._sign()
                except AuditUnavailable as error:  # the record is durable; signing is retried later
                    _log.warning("audit checkpoint deferred: %s", error)
            return record

    def checkpoint(self) -> SignedCheckpoint:
        """Sign the log as it is now (unless the newest checkpoint already covers it)."""
        with self._lock:
            if self._latest is not None and self._latest.size == self._tree.size:
                return self._latest
            return self._sign()

    def witness_update(self, witnessed_size: int) -> WitnessUpdate:
        """The newest checkpoint and a consistency proof from `witnessed_size`, for a witness."""
        with self._lock:
            latest = self.checkpoint()
            if not 0 <= witnessed_size <= latest.size:
                raise AuditIntegrityError(
                    f"the witness holds {witnessed_size} records of {self.origin} but this log has "
                    f"{latest.size}: this log was truncated or the witness saw another log"
                )
            proof = self._tree.consistency_proof(witnessed_size, latest.size)
            return WitnessUpdate(latest, witnessed_size, tuple(proof))

    def inclusion_proof(self, sequence: int, size: int) -> list[bytes]:
        with self._lock:
            return self._tree.inclusion_proof(sequence, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            return self._tree.consistency_proof(old_size, new_size)

    def close(self) -> None:
        """Sign a last checkpoint and release the files."""
        with self._lock:
            if self._closed:
                return
            try:
                self.checkpoint()
            finally:
                self._closed = True
                self._records.close()
                self._checkpoints.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _opened(self, existing: int, torn: bytes, rotated: bool) -> None:
        """Record what opening found, then sign, so every start of a tier is in the log."""
        own = self.origin
        if torn:
            self.record(
                AuditEvent(
                    EventKind.LOG_RECOVERED,
                    actor=own,
                    jurisdiction=own.jurisdiction,
                    digests={"dropped": sha256_hex(torn)},
                    details={"dropped_bytes": len(torn), "reason": "an append interrupted by a crash"},
                )
            )
        if rotated:
            previous = {"previous_key": self._latest.key_id} if self._latest is not None else {}
            self.record(
                AuditEvent(
                    EventKind.KEY_CHANGE,
                    actor=own,
                    jurisdiction=own.jurisdiction,
                    digests={"new_key": self._key_id, **previous},
                    details={"reason": "audit checkpoint signing key rotated"},
                )
            )
        self.record(
            AuditEvent(
                EventKind.LOG_OPENED, actor=own, jurisdiction=own.jurisdiction, details={"records": existing}
            )
        )
        self.checkpoint()

    def _due(self) -> bool:
        if self._latest is None:
            return True
        return (
            self._tree.size - self._latest.size >= self._every
            or self._clock() - self._latest.time >= self._interval
        )

    def _sign(self) -> SignedCheckpoint:
        size = self._tree.size
        checkpoint = Checkpoint(self.origin, size, self._tree.root(size), self._clock(), self._key_id)
        signed = sign(checkpoint, self._key)
        self._checkpoints.append_line(signed.to_line())
        self._latest = signed
        return signed
