"""Offline verification of an audit log, its signed checkpoints and what witnesses saw of it.

Every line is parsed and re-hashed; sequence numbers must run 0, 1, 2, ... in file order; each
record names the hash of the record before it, so an edited line is found at its own line;
every signed checkpoint must match the Merkle root recomputed over the records it covers, so
an edit the hash links do not reveal is still bounded between two checkpoints; a checkpoint
that covers more records than the file holds reveals a truncated tail; and a checkpoint that a
witness recorded reveals a log rewritten (forked) and re-signed by its own key.

A last line without its newline is an append a crash interrupted (never acknowledged): it is
reported as such, apart from tampering.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jurisfed.audit.checkpoint import SignedCheckpoint, checkpoints_path
from jurisfed.audit.events import GENESIS, AuditRecord, EventKind, MalformedRecord, format_time
from jurisfed.audit.keys import keys_by_id, load_public_keys, public_path
from jurisfed.audit.merkle import MerkleTree, leaf_hash
from jurisfed.audit.witness import WitnessEntry, read_witness_file
from jurisfed.auth.identity import Identity
from jurisfed.errors import ConfigError


class Severity(enum.StrEnum):
    TAMPERING = "tampering"  # the log was changed: verification fails
    CRASH = "crash"  # an append was interrupted: what precedes it verifies
    NOTE = "note"  # worth knowing; not a failure


class Problem(enum.StrEnum):
    MALFORMED = "malformed"
    MISSING = "missing"
    MOVED = "moved"
    EDITED = "edited"
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"
    TRUNCATED = "truncated"
    BAD_CHECKPOINT = "bad-checkpoint"
    NO_CHECKPOINT = "no-checkpoint"
    FORKED = "forked"
    INTERRUPTED_APPEND = "interrupted-append"
    UNSIGNED_TAIL = "unsigned-tail"
    UNPINNED_KEY = "unpinned-key"


_SEVERITY_ORDER = (Severity.TAMPERING, Severity.CRASH, Severity.NOTE)


@dataclass(frozen=True)
class Finding:
    problem: Problem
    severity: Severity
    message: str
    line: int | None = None  # 1-based line of `file`
    sequence: int | None = None
    file: str = "log"

    def __str__(self) -> str:
        where = [f"{self.file} line {self.line}"] if self.line is not None else []
        where += [f"sequence {self.sequence}"] if self.sequence is not None else []
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.severity.upper()} {self.problem}{place}: {self.message}"


@dataclass(frozen=True)
class LogScan:
    """A pass over the log's complete lines: records (None where malformed) and their tree."""

    records: tuple[AuditRecord | None, ...]
    tree: MerkleTree
    torn_tail: bytes
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class LogReport:
    path: Path
    origin: Identity | None
    records: int
    latest: SignedCheckpoint | None  # the newest checkpoint that verifies against the records
    checkpoints: int
    key_ids: tuple[str, ...]
    keys_pinned: bool
    witnessed: int
    findings: tuple[Finding, ...]

    @property
    def tampered(self) -> bool:
        return any(f.severity is Severity.TAMPERING for f in self.findings)

    @property
    def interrupted(self) -> bool:
        return any(f.severity is Severity.CRASH for f in self.findings)

    @property
    def ok(self) -> bool:
        return not self.tampered and not self.interrupted

    def verdict(self) -> str:
        if self.tampered:
            return "FAILED: the log does not match what was signed or witnessed"
        if self.interrupted:
            return "INTERRUPTED: the last append was cut short by a crash; everything before it verifies"
        return "VERIFIED"


def scan_log(data: bytes) -> LogScan:
    """Parse and hash every complete line of a log file's bytes; check order and hash links."""
    lines = data.split(b"\n")
    torn_tail = lines.pop()
    records: list[AuditRecord | None] = []
    findings: list[Finding] = []
    tree = MerkleTree()
    for number, line in enumerate(lines, start=1):
        try:
            record = AuditRecord.from_line(line)
        except MalformedRecord as error:
            findings.append(_tampered(Problem.MALFORMED, f"not a valid record: {error}", number))
            records.append(None)
            tree.append(leaf_hash(line))
            continue
        records.append(record)
        tree.append(record.leaf_hash())
    findings += _order_findings(records, tree)
    return LogScan(tuple(records), tree, torn_tail, tuple(findings))


def check_checkpoints(
    scan: LogScan, checkpoints_data: bytes, keys: dict[str, Ed25519PublicKey]
) -> tuple[list[Finding], list[SignedCheckpoint]]:
    """Findings about the signed checkpoints, and those that verify against the records."""
    findings: list[Finding] = []
    lines = checkpoints_data.split(b"\n")
    torn = lines.pop()
    if torn:
        findings.append(
            Finding(
                Problem.INTERRUPTED_APPEND,
                Severity.CRASH,
                f"the last checkpoint ({len(torn)} bytes, no line end) was cut short while being written",
                len(lines) + 1,
                file="checkpoints",
            )
        )
    valid: list[tuple[int, SignedCheckpoint]] = []
    for number, line in enumerate(lines, start=1):
        try:
            signed = SignedCheckpoint.from_line(line)
        except MalformedRecord as error:
            findings.append(_tampered(Problem.BAD_CHECKPOINT, str(error), number, file="checkpoints"))
            continue
        key = keys.get(signed.key_id)
        if key is None or not signed.verify(key):
            why = "an untrusted key" if key is None else "an invalid signature"
            message = f"signed with {why} ({signed.key_id[:16]}...)"
            findings.append(_tampered(Problem.BAD_CHECKPOINT, message, number, file="checkpoints"))
            continue
        if valid and (signed.size < valid[-1][1].size or signed.origin != valid[-1][1].origin):
            before = valid[-1][1]
            message = (
                f"covers {signed.size} records of {signed.origin} after line {valid[-1][0]} covered "
                f"{before.size} of {before.origin}: the log was rolled back and signed again"
            )
            findings.append(_tampered(Problem.BAD_CHECKPOINT, message, number, file="checkpoints"))
        valid.append((number, signed))

    size = scan.tree.size
    matching: list[SignedCheckpoint] = []
    beyond = [(n, c) for n, c in valid if c.size > size]
    if beyond:
        number, longest = max(beyond, key=lambda item: item[1].size)
        findings.append(_truncated(scan, longest, f"checkpoint line {number}"))
    agreed = 0
    for number, signed in sorted(valid, key=lambda item: item[1].size):
        if signed.size > size:
            break
        if scan.tree.root(signed.size) != signed.root:
            message = (
                f"records {agreed}..{signed.size - 1} (lines {agreed + 1}..{signed.size}) differ from what "
                f"was signed at {format_time(signed.time)} (checkpoint line {number}): they were edited"
            )
            findings.append(_tampered(Problem.CHECKPOINT_MISMATCH, message, agreed + 1, agreed))
            break
        agreed = signed.size
        matching.append(signed)
    if not valid and size:
        message = "no valid signed checkpoint covers this log (the checkpoint file is missing or empty)"
        findings.append(_tampered(Problem.NO_CHECKPOINT, message))
    elif agreed < size and not beyond and not any(f.problem is Problem.CHECKPOINT_MISMATCH for f in findings):
        message = (
            f"records {agreed}..{size - 1} were written after the last signed checkpoint; "
            "their hash links verify but no signature covers them yet"
        )
        findings.append(Finding(Problem.UNSIGNED_TAIL, Severity.NOTE, message, agreed + 1, agreed))
    return findings, matching


def check_witnessed(scan: LogScan, origin: Identity | None, entries: Sequence[WitnessEntry]) -> list[Finding]:
    """Compare the log with every checkpoint of it that a witness recorded."""
    findings: list[Finding] = []
    size = scan.tree.size
    mine = [e for e in entries if origin is None or e.checkpoint.origin == origin]
    for entry in sorted(mine, key=lambda e: e.checkpoint.size):
        signed = entry.checkpoint
        where = f"{entry.witness} (witness file line {entry.line})"
        if not signed.verify(entry.public_key):
            message = f"the checkpoint {where} recorded does not carry a valid signature"
            findings.append(_tampered(Problem.BAD_CHECKPOINT, message, entry.line, file="witness"))
            continue
        if entry.conflicting is not None:
            message = (
                f"{where} holds two checkpoints of this log signed by its key that cannot both be true: "
                f"{signed.size} records at {format_time(signed.time)} and {entry.conflicting.size} records "
                f"at {format_time(entry.conflicting.time)} ({entry.reason})"
            )
            findings.append(_tampered(Problem.FORKED, message, file="witness"))
            continue
        if signed.size > size:
            findings.append(_truncated(scan, signed, where))
        elif scan.tree.root(signed.size) != signed.root:
            agreed = max(
                (e.checkpoint.size for e in mine if e.checkpoint.size < signed.size and _agrees(scan, e)),
                default=0,
            )
            bound = f"it agrees with the {agreed} records witnessed before, so " if agreed else ""
            message = (
                f"the first {signed.size} records differ from the checkpoint {where} witnessed at "
                f"{format_time(signed.time)}: the log was rewritten after the witness saw it (a fork); "
                f"{bound}the change lies within records {agreed}..{signed.size - 1} "
                f"(lines {agreed + 1}..{signed.size})"
            )
            place = (agreed + 1, agreed) if agreed else (None, None)
            findings.append(_tampered(Problem.FORKED, message, *place))
    return findings


def inspect_log(
    path: Path, keys: Sequence[Ed25519PublicKey] | None = None, witness_files: Sequence[Path] = ()
) -> tuple[LogReport, LogScan]:
    """Verify the log at `path`; `keys` pins the signing keys (else they are read from LOG.pub)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"audit log {path} cannot be read: {error.strerror}") from None
    pinned = keys is not None
    findings: list[Finding] = []
    if keys is None:
        keys = load_public_keys(public_path(path)) if public_path(path).exists() else []
        findings.append(
            Finding(
                Problem.UNPINNED_KEY,
                Severity.NOTE,
                f"signing keys were read from {public_path(path).name} next to the log; pin them with --key "
                "to rule out a log re-signed with another key",
            )
        )
    scan = scan_log(data)
    cp_path = checkpoints_path(path)
    cp_data = cp_path.read_bytes() if cp_path.exists() else b""
    checkpoint_findings, matching = check_checkpoints(scan, cp_data, keys_by_id(keys))
    findings += scan.findings
    findings += checkpoint_findings
    origin = matching[-1].origin if matching else _origin_from_records(scan)
    entries = [entry for file in witness_files for entry in read_witness_file(file)]
    findings += check_witnessed(scan, origin, entries)
    if scan.torn_tail:
        findings += _torn_tail_finding(scan, findings)
    # Most precise first: a finding on one line before a checkpoint's range, the log before other files.
    findings.sort(
        key=lambda f: (
            _SEVERITY_ORDER.index(f.severity),
            f.file != "log",
            f.problem is Problem.CHECKPOINT_MISMATCH,
            f.line or 0,
        )
    )
    report = LogReport(
        path=path,
        origin=origin,
        records=scan.tree.size,
        latest=matching[-1] if matching else None,
        checkpoints=len(matching),
        key_ids=tuple(sorted({c.key_id for c in matching})),
        keys_pinned=pinned,
        witnessed=sum(1 for e in entries if origin is None or e.checkpoint.origin == origin),
        findings=tuple(findings),
    )
    return report, scan


def verify_log(
    path: Path, keys: Sequence[Ed25519PublicKey] | None = None, witness_files: Sequence[Path] = ()
) -> LogReport:
    return inspect_log(path, keys, witness_files)[0]


def _order_findings(records: Sequence[AuditRecord | None], tree: MerkleTree) -> list[Finding]:
    """Sequence numbers must run 0, 1, 2, ... and each record must name the hash of the one before."""
    findings: list[Finding] = []
    first_line: dict[int, int] = {}
    leaf_of: dict[int, bytes] = {}
    for index, record in enumerate(records):
        if record is not None and record.sequence not in first_line:
            first_line[record.sequence] = index + 1
            leaf_of[record.sequence] = tree.leaf(index)
    seen: set[int] = set()
    moved: set[int] = set()
    previous = -1
    for index, record in enumerate(records):
        number = index + 1
        if record is None:
            previous += 1
            continue
        sequence = record.sequence
        if sequence in seen:
            message = (
                f"sequence {sequence} appears again (first at line {first_line[sequence]}): a line was copied"
            )
            findings.append(_tampered(Problem.MOVED, message, number, sequence))
        elif sequence <= previous and sequence not in moved:
            message = f"sequence {sequence} comes after sequence {previous}: lines were moved"
            findings.append(_tampered(Problem.MOVED, message, number, sequence))
        elif sequence > previous + 1:
            gap = [s for s in range(previous + 1, sequence) if s not in seen]
            later = [s for s in gap if s in first_line]
            missing = [s for s in gap if s not in first_line]
            if later:
                message = (
                    f"sequence {sequence} comes before sequence {later[0]} "
                    f"(line {first_line[later[0]]}): lines were moved"
                )
                findings.append(_tampered(Problem.MOVED, message, number, sequence))
                moved.update(later)
            if missing:
                message = f"records {_ranges(missing)} are missing before this line: lines were deleted"
                findings.append(_tampered(Problem.MISSING, message, number, missing[0]))
        seen.add(sequence)
        previous = max(previous, sequence)
        expected = GENESIS if sequence == 0 else leaf_of.get(sequence - 1, b"").hex()
        if expected and record.previous != expected:
            if sequence == 0:
                message = "the first record does not start the log: its link to a previous record was changed"
                findings.append(_tampered(Problem.EDITED, message, number, sequence))
            else:
                before = first_line[sequence - 1]
                message = (
                    f"this record was changed after it was written: line {number} "
                    f"(sequence {sequence}) recorded a different hash for it"
                )
                findings.append(_tampered(Problem.EDITED, message, before, sequence - 1))
    return findings


def _truncated(scan: LogScan, signed: SignedCheckpoint, by: str) -> Finding:
    size = scan.tree.size
    cut = " and its last line is cut off mid-record" if scan.torn_tail else ""
    message = (
        f"the log ends after {size} records{cut}, but {by} holds a checkpoint signed at "
        f"{format_time(signed.time)} covering {signed.size}: records {size}..{signed.size - 1} "
        "were removed from the end (truncated)"
    )
    return _tampered(Problem.TRUNCATED, message, size + 1, size)


def _torn_tail_finding(scan: LogScan, findings: Sequence[Finding]) -> list[Finding]:
    if any(f.problem is Problem.TRUNCATED for f in findings):
        return []  # the cut line is part of the truncation, reported there
    size = scan.tree.size
    message = (
        f"the last line ({len(scan.torn_tail)} bytes, no line end) is an append interrupted by a crash; "
        "it was never acknowledged, and the log reopens without it"
    )
    return [Finding(Problem.INTERRUPTED_APPEND, Severity.CRASH, message, size + 1, size)]


def _agrees(scan: LogScan, entry: WitnessEntry) -> bool:
    signed = entry.checkpoint
    return signed.size <= scan.tree.size and scan.tree.root(signed.size) == signed.root


def _origin_from_records(scan: LogScan) -> Identity | None:
    """Whose log this is when no checkpoint says so: the actor of its first `log_opened` record."""
    for record in scan.records:
        if record is not None and record.event.kind is EventKind.LOG_OPENED:
            return record.event.actor
    return None


def _tampered(
    problem: Problem, message: str, line: int | None = None, sequence: int | None = None, file: str = "log"
) -> Finding:
    return Finding(problem, Severity.TAMPERING, message, line, sequence, file)


def _ranges(numbers: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3..5, 9'."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}..{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)
