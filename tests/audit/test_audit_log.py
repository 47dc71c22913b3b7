"""`AuditLog` on real files: records are durable and chained before `record` returns, checkpoints are
signed on a cadence, a crash is recovered and recorded, a tampered log is never appended to."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from pathlib import Path

import pytest
from audit_samples import EU_REGIONAL, GLOBAL, round_events
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit import AuditEvent, AuditLog, AuditSink, EventKind, MemoryAuditSink
from jurisfed.audit.checkpoint import checkpoints_path
from jurisfed.audit.errors import AuditIntegrityError, AuditUnavailable
from jurisfed.audit.events import GENESIS, AuditRecord
from jurisfed.audit.keys import create_signing_key, key_id, load_public_keys, load_signing_key, public_path
from jurisfed.audit.verify import verify_log
from jurisfed.errors import ConfigError, WrongState


def lines(path: Path) -> list[AuditRecord]:
    return [AuditRecord.from_line(line) for line in path.read_bytes().split(b"\n")[:-1]]


def test_each_record_is_a_chained_line_on_disk_when_record_returns(
    tmp_path: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr("jurisfed.audit.files.os.fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    log = AuditLog.open(path, EU_REGIONAL, signing_key, checkpoint_every=1000)
    events = round_events(1)

    for index, event in enumerate(events, start=1):
        before = len(synced)
        record = log.record(event)
        assert len(synced) > before  # fsync happened inside record()
        on_disk = lines(path)
        assert on_disk[-1] == record
        assert record.sequence == index

    on_disk = lines(path)
    assert on_disk[0].event.kind is EventKind.LOG_OPENED
    assert [r.sequence for r in on_disk] == list(range(len(events) + 1))
    assert on_disk[0].previous == GENESIS
    for before, after in itertools.pairwise(on_disk):
        assert after.previous == before.leaf_hash().hex()
    log.close()


def test_a_reopened_log_continues_where_it_stopped(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, EU_REGIONAL, signing_key) as log:
        log.record(round_events(1)[0])
    with AuditLog.open(path, EU_REGIONAL, signing_key) as log:
        assert log.size == 3  # opened, one event, opened again
        record = log.record(round_events(2)[0])

    assert record.sequence == 3
    assert [r.event.kind for r in lines(path)].count(EventKind.LOG_OPENED) == 2
    assert verify_log(path, [signing_key.public_key()]).ok


def test_checkpoints_are_signed_on_a_cadence_on_demand_and_on_close(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, EU_REGIONAL, signing_key, checkpoint_every=5)
    assert log.latest_checkpoint is not None
    assert log.latest_checkpoint.size == 1
    for event in round_events(1) + round_events(2):  # 12 events
        log.record(event)
    assert log.latest_checkpoint.size == 11  # at 6 and 11

    on_demand = log.checkpoint()
    assert on_demand.size == 13
    assert log.checkpoint() is on_demand
    log.record(round_events(3)[0])
    log.close()

    signed = [line for line in checkpoints_path(path).read_bytes().split(b"\n") if line]
    assert len(signed) == 5  # 1, 6, 11, 13, 14
    assert on_demand.verify(signing_key.public_key())
    assert on_demand.origin == EU_REGIONAL
    with pytest.raises(WrongState):
        log.record(round_events(3)[1])


def test_concurrent_records_get_distinct_sequences_and_the_log_verifies(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, EU_REGIONAL, signing_key, checkpoint_every=7)
    sequences: list[int] = []
    guard = threading.Lock()

    def work() -> None:
        for event in round_events(1) * 5:
            record = log.record(event)
            with guard:
                sequences.append(record.sequence)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()

    assert sorted(sequences) == list(range(1, 8 * 30 + 1))
    report = verify_log(path, [signing_key.public_key()])
    assert report.ok
    assert report.records == 241


def test_a_crash_mid_append_is_cut_off_and_recorded_on_reopen(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, EU_REGIONAL, signing_key) as log:
        log.record(round_events(1)[0])
    torn = b'{"actor":{"jurisdiction":"EU","no'
    with path.open("ab") as handle:
        handle.write(torn)  # died inside write()
    assert verify_log(path, [signing_key.public_key()]).interrupted

    with AuditLog.open(path, EU_REGIONAL, signing_key) as log:
        log.record(round_events(1)[1])

    records = lines(path)
    recovered = [r for r in records if r.event.kind is EventKind.LOG_RECOVERED]
    assert len(recovered) == 1
    assert recovered[0].event.details["dropped_bytes"] == len(torn)
    assert verify_log(path, [signing_key.public_key()]).ok


def test_a_tampered_log_is_never_appended_to(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, EU_REGIONAL, signing_key) as log:
        for event in round_events(1):
            log.record(event)
    data = path.read_bytes().replace(b'"decision":"deny"', b'"decision":"allow"')
    path.write_bytes(data)
    size = len(data)

    with pytest.raises(AuditIntegrityError, match="refusing to append"):
        AuditLog.open(path, EU_REGIONAL, signing_key)
    assert len(path.read_bytes()) == size


def test_one_writer_at_a_time_and_only_its_owner(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, EU_REGIONAL, signing_key), pytest.raises(ConfigError, match="already open"):
        AuditLog.open(path, EU_REGIONAL, signing_key)
    with pytest.raises(ConfigError, match="not of jurisfed://GLOBAL"):
        AuditLog.open(path, GLOBAL, signing_key)


def test_a_failed_write_acknowledges_nothing_and_leaves_no_partial_line(
    tmp_path: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, EU_REGIONAL, signing_key)
    before = path.read_bytes()
    real_write = os.write

    def disk_fills_up(fd: int, data: bytes) -> int:
        if fd == log._records._fd and len(data) > 20:
            real_write(fd, data[:20])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("jurisfed.audit.files.os.write", disk_fills_up)
    with pytest.raises(AuditUnavailable, match="No space left"):
        log.record(round_events(1)[0])
    assert path.read_bytes() == before
    monkeypatch.undo()

    assert log.record(round_events(1)[1]).sequence == 1
    log.close()
    assert verify_log(path, [signing_key.public_key()]).ok


def test_a_rotated_key_is_recorded_and_both_keys_verify(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, EU_REGIONAL, signing_key) as log:
        log.record(round_events(1)[0])
    new_key = create_signing_key(tmp_path / "new.key")
    with AuditLog.open(path, EU_REGIONAL, new_key) as log:
        log.record(round_events(1)[1])

    changes = [r for r in lines(path) if r.event.kind is EventKind.KEY_CHANGE]
    assert len(changes) == 1
    assert changes[0].event.digests == {
        "new_key": key_id(new_key.public_key()),
        "previous_key": key_id(signing_key.public_key()),
    }
    assert len(load_public_keys(public_path(path))) == 2
    assert verify_log(path, [signing_key.public_key(), new_key.public_key()]).ok
    assert verify_log(path, [new_key.public_key()]).tampered  # the old checkpoints need the old key


def test_signing_keys_are_private_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    create_signing_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path).public_key() == load_public_keys(public_path(path))[0]
    with pytest.raises(ConfigError, match="already exists"):
        create_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_signing_key(path)


def test_the_memory_sink_numbers_and_chains_like_the_log() -> None:
    sink: AuditSink = MemoryAuditSink()
    first = sink.record(AuditEvent(EventKind.COMMIT, actor=EU_REGIONAL, jurisdiction="EU", round_number=1))
    second = sink.record(AuditEvent(EventKind.ROLLBACK, actor=EU_REGIONAL, jurisdiction="EU", round_number=2))

    assert (first.sequence, second.sequence) == (0, 1)
    assert first.previous == GENESIS
    assert second.previous == first.leaf_hash().hex()
    assert isinstance(sink, MemoryAuditSink)
    assert [e.kind for e in sink.events()] == [EventKind.COMMIT, EventKind.ROLLBACK]
