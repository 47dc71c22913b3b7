"""Regional and global witness each other's logs: a truncated or rewritten (forked) log is refused
by the witness, the conflict is kept as evidence, and `verify --witness` says where the log parts ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_samples import EU_REGIONAL, GLOBAL, round_events
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit import AuditLog, EventKind
from jurisfed.audit.checkpoint import Checkpoint, SignedCheckpoint, checkpoints_path, sign
from jurisfed.audit.errors import AuditIntegrityError, LogForked
from jurisfed.audit.events import AuditRecord
from jurisfed.audit.keys import create_signing_key, key_id
from jurisfed.audit.verify import Problem, verify_log
from jurisfed.audit.witness import WitnessBook, read_witness_file
from jurisfed.errors import NotAllowed, Unauthenticated, WrongState


class Federation:
    """An EU regional and the global, each with its own log, witnessing each other."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.regional_key = create_signing_key(root / "keys" / "eu.key")
        self.global_key = create_signing_key(root / "keys" / "global.key")
        self.regional_path = root / "eu" / "audit.jsonl"
        self.regional = AuditLog.open(self.regional_path, EU_REGIONAL, self.regional_key)
        self.global_log = AuditLog.open(root / "global" / "audit.jsonl", GLOBAL, self.global_key)
        self.witness_path = root / "global" / "witness.jsonl"
        self.at_global = WitnessBook(
            self.witness_path, GLOBAL, {EU_REGIONAL: self.regional_key.public_key()}, sink=self.global_log
        )
        self.at_regional = WitnessBook(
            root / "eu" / "witness.jsonl",
            EU_REGIONAL,
            {GLOBAL: self.global_key.public_key()},
            sink=self.regional,
        )

    def run_round(self, round_number: int) -> None:
        for event in round_events(round_number):
            self.regional.record(event)
        self.regional.checkpoint()

    def exchange(self) -> None:
        """What the regional's upstream client does after each round (over gRPC in the tiers)."""
        update = self.regional.witness_update(self.at_global.witnessed_size(EU_REGIONAL))
        self.at_global.observe(update.checkpoint, update.old_size, update.proof)
        back = self.global_log.witness_update(self.at_regional.witnessed_size(GLOBAL))
        self.at_regional.observe(back.checkpoint, back.old_size, back.proof)

    def close(self) -> None:
        for closable in (self.at_global, self.at_regional, self.regional, self.global_log):
            closable.close()


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    return Federation(tmp_path)


def fork(path: Path, keep: int, key: Ed25519PrivateKey, rounds: range) -> None:
    """Rewrite the log from record `keep` on, and sign the new history with the log's own key."""
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in lines[:keep]))
    checkpoints = checkpoints_path(path)
    kept = [
        c for c in checkpoints.read_bytes().split(b"\n")[:-1] if SignedCheckpoint.from_line(c).size <= keep
    ]
    checkpoints.write_bytes(b"".join(c + b"\n" for c in kept))
    with AuditLog.open(path, EU_REGIONAL, key) as log:
        for round_number in rounds:
            for event in round_events(round_number, silos=1):
                log.record(event)


def test_honest_logs_extend_what_each_witness_holds(federation: Federation) -> None:
    for round_number in (1, 2, 3):
        federation.run_round(round_number)
        federation.exchange()
        federation.exchange()  # sending the same checkpoint again changes nothing
    held = federation.at_global.latest(EU_REGIONAL)
    assert held is not None
    assert held.size >= 19
    federation.close()

    assert verify_log(
        federation.regional_path, [federation.regional_key.public_key()], [federation.witness_path]
    ).ok
    entries = read_witness_file(federation.witness_path)
    assert [e.checkpoint.size for e in entries] == sorted({e.checkpoint.size for e in entries})
    # Each witnessing is itself an event in the witness's own log.
    global_records = [
        AuditRecord.from_line(line)
        for line in (federation.root / "global" / "audit.jsonl").read_bytes().splitlines()
    ]
    witnessed = [r.event for r in global_records if r.event.kind is EventKind.WITNESSED_CHECKPOINT]
    assert len(witnessed) == len(entries)
    assert witnessed[-1].subject == EU_REGIONAL
    assert witnessed[-1].details["size"] == held.size


def test_a_forked_log_is_refused_by_the_witness_and_found_by_verify(federation: Federation) -> None:
    for round_number in (1, 2, 3):
        federation.run_round(round_number)
        federation.exchange()
    witnessed = federation.witness_path
    size = federation.regional.size
    federation.regional.close()
    # The regional's operator rewrites rounds 2 and 3 and re-signs with the regional's own key.
    fork(federation.regional_path, 8, federation.regional_key, range(2, 8))
    key = federation.regional_key.public_key()
    assert verify_log(federation.regional_path, [key]).ok  # alone, the forked log looks fine

    forked = AuditLog.open(federation.regional_path, EU_REGIONAL, federation.regional_key)
    assert forked.size > size
    update = forked.witness_update(federation.at_global.witnessed_size(EU_REGIONAL))
    with pytest.raises(LogForked, match="forked"):
        federation.at_global.observe(update.checkpoint, update.old_size, update.proof)
    forked.close()
    federation.at_global.close()

    report = verify_log(federation.regional_path, [key], [witnessed])
    assert report.tampered
    forks = [f for f in report.findings if f.problem is Problem.FORKED]
    # The witness saw 7 records after round 1 (log_opened + 6 events); the fork keeps 8 and rewrites the rest.
    first = forks[0]
    assert "rewritten after the witness saw it" in first.message
    assert (first.line, first.sequence) == (8, 7)
    assert (
        "agrees with the 7 records witnessed before, so the change lies within records 7.." in first.message
    )
    assert any("cannot both be true" in f.message for f in forks)  # the refused one is kept as evidence
    assert [e for e in read_witness_file(witnessed) if e.conflicting is not None]


def test_a_truncated_log_is_found_through_the_witness(federation: Federation) -> None:
    for round_number in (1, 2, 3):
        federation.run_round(round_number)
    federation.exchange()
    federation.regional.close()
    federation.at_global.close()
    fork(federation.regional_path, 10, federation.regional_key, range(0))  # cut, re-signed, nothing added
    key = federation.regional_key.public_key()
    assert verify_log(federation.regional_path, [key]).ok

    report = verify_log(federation.regional_path, [key], [federation.witness_path])

    truncated = [f for f in report.findings if f.problem is Problem.TRUNCATED]
    assert truncated
    assert truncated[0].sequence == 11
    witnessed_size = read_witness_file(federation.witness_path)[-1].checkpoint.size
    with (
        AuditLog.open(federation.regional_path, EU_REGIONAL, federation.regional_key) as cut,
        pytest.raises(AuditIntegrityError, match="truncated"),
    ):
        cut.witness_update(witnessed_size)


def test_the_witness_refuses_strangers_forgeries_and_stale_proofs(
    federation: Federation, tmp_path: Path
) -> None:
    federation.run_round(1)
    book = federation.at_global
    update = federation.regional.witness_update(0)
    book.observe(update.checkpoint, 0, update.proof)
    federation.run_round(2)
    update = federation.regional.witness_update(book.witnessed_size(EU_REGIONAL))
    lines_before = federation.witness_path.read_bytes()

    with pytest.raises(WrongState, match="witnessed size"):
        book.observe(update.checkpoint, 0, [])
    stranger = federation.global_log.checkpoint()
    with pytest.raises(NotAllowed):
        book.observe(stranger, 0, [])
    intruder = create_signing_key(tmp_path / "intruder.key")
    forged = sign(
        Checkpoint(EU_REGIONAL, 99, b"\x00" * 32, update.checkpoint.time, key_id(intruder.public_key())),
        intruder,
    )
    with pytest.raises(Unauthenticated):
        book.observe(forged, update.old_size, [])
    assert federation.witness_path.read_bytes() == lines_before  # nothing recorded for any of these

    book.observe(update.checkpoint, update.old_size, update.proof)
    held = book.latest(EU_REGIONAL)
    assert held == update.checkpoint
    federation.close()
    reopened = WitnessBook(
        federation.witness_path, GLOBAL, {EU_REGIONAL: federation.regional_key.public_key()}
    )
    assert reopened.latest(EU_REGIONAL) == held
    reopened.close()


def test_a_shrinking_or_different_log_of_the_same_size_is_a_fork(federation: Federation) -> None:
    federation.run_round(1)
    federation.exchange()
    held = federation.at_global.latest(EU_REGIONAL)
    assert held is not None
    key = federation.regional_key
    for size, root in ((held.size - 1, held.root), (held.size, b"\x01" * 32)):
        lie = sign(Checkpoint(EU_REGIONAL, size, root, held.time, held.key_id), key)
        with pytest.raises(LogForked):
            federation.at_global.observe(lie, held.size, [])
    assert federation.at_global.latest(EU_REGIONAL) == held
    federation.close()
    assert len([e for e in read_witness_file(federation.witness_path) if e.conflicting is not None]) == 2
