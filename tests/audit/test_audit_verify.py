"""`verify_log` on real files: a good log verifies; every kind of tampering fails and says where;
an append interrupted by a crash is reported as such, not as tampering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from audit_samples import EU_REGIONAL, edit_line, rewrite_lines, round_events
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jurisfed.audit.checkpoint import checkpoints_path
from jurisfed.audit.keys import create_signing_key, public_path
from jurisfed.audit.log import AuditLog
from jurisfed.audit.verify import Problem, Severity, verify_log

# write_log(): line 1 is log_opened (sequence 0), then 6 records per round: sequences 1-6 are
# round 1 (contract, 3 updates, a denial at sequence 5, the aggregate), 7-12 round 2, 13-18 round 3.
RECORDS = 19


def problems(path: Path, key: Ed25519PrivateKey) -> list[tuple[Problem, int | None, int | None]]:
    """(problem, line, sequence) of every finding that is not a mere note."""
    report = verify_log(path, [key.public_key()])
    return [(f.problem, f.line, f.sequence) for f in report.findings if f.severity is not Severity.NOTE]


def test_a_good_log_verifies(write_log: Callable[..., Path], signing_key: Ed25519PrivateKey) -> None:
    path = write_log()

    report = verify_log(path, [signing_key.public_key()])

    assert report.ok, report.findings
    assert report.verdict() == "VERIFIED"
    assert report.records == RECORDS
    assert report.latest is not None
    assert report.latest.size == RECORDS
    assert report.origin == EU_REGIONAL
    assert report.findings == ()


def test_an_edited_line_is_found_at_its_line(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    edit_line(
        path, 5, b'"decision":"deny"', b'"decision":"allow"'
    )  # sequence 5: a denial turned into an allow

    report = verify_log(path, [signing_key.public_key()])

    assert report.tampered
    first = report.findings[0]
    assert (first.problem, first.line, first.sequence) == (Problem.EDITED, 6, 5)
    assert "line 6" in str(first)
    assert "sequence 5" in str(first)
    assert (Problem.CHECKPOINT_MISMATCH, 6, 5) in problems(path, signing_key)


def test_an_edited_last_line_is_caught_by_the_checkpoint(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    edit_line(path, RECORDS - 1, b'"compression":"int8"', b'"compression":"none"')

    report = verify_log(path, [signing_key.public_key()])

    (finding,) = report.findings
    assert finding.problem is Problem.CHECKPOINT_MISMATCH
    assert finding.line is not None
    assert finding.line <= RECORDS
    assert f"..{RECORDS - 1} (lines {finding.line}..{RECORDS}) differ from what was signed" in finding.message


def test_a_deleted_line_is_found(write_log: Callable[..., Path], signing_key: Ed25519PrivateKey) -> None:
    path = write_log()
    rewrite_lines(path, lambda lines: lines[:7] + lines[8:])  # sequence 7 removed

    report = verify_log(path, [signing_key.public_key()])

    assert report.tampered
    first = report.findings[0]
    assert (first.problem, first.line, first.sequence) == (Problem.MISSING, 8, 7)
    assert "records 7 are missing before this line: lines were deleted" in first.message


def test_reordered_lines_are_found(write_log: Callable[..., Path], signing_key: Ed25519PrivateKey) -> None:
    path = write_log()
    rewrite_lines(path, lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]])  # swap sequences 3 and 4

    report = verify_log(path, [signing_key.public_key()])

    assert report.tampered
    first = report.findings[0]
    assert (first.problem, first.line, first.sequence) == (Problem.MOVED, 4, 4)
    assert "comes before sequence 3 (line 5)" in first.message
    assert not any(f.problem is Problem.MISSING for f in report.findings)


def test_a_copied_line_is_found(write_log: Callable[..., Path], signing_key: Ed25519PrivateKey) -> None:
    path = write_log()
    rewrite_lines(path, lambda lines: [*lines[:10], lines[2], *lines[10:]])

    found = problems(path, signing_key)

    assert (Problem.MOVED, 11, 2) in found


def test_a_truncated_tail_is_found(write_log: Callable[..., Path], signing_key: Ed25519PrivateKey) -> None:
    path = write_log()
    rewrite_lines(path, lambda lines: lines[:-3])

    report = verify_log(path, [signing_key.public_key()])

    assert report.tampered
    (finding,) = [f for f in report.findings if f.severity is Severity.TAMPERING]
    assert (finding.problem, finding.line, finding.sequence) == (Problem.TRUNCATED, RECORDS - 2, RECORDS - 3)
    assert f"records {RECORDS - 3}..{RECORDS - 1} were removed" in finding.message


def test_a_tail_cut_mid_line_is_truncation_not_a_crash(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last signed record loses its end

    report = verify_log(path, [signing_key.public_key()])

    assert report.tampered
    assert not report.interrupted
    assert [f.problem for f in report.findings] == [Problem.TRUNCATED]
    assert "cut off mid-record" in report.findings[0].message


def test_an_interrupted_append_is_a_crash_not_tampering(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    record = round_events(9)[0]
    with AuditLog.open(path.with_name("scratch.jsonl"), EU_REGIONAL, signing_key) as scratch:
        line = scratch.record(record).to_line()
    with path.open("ab") as handle:
        handle.write(line[: len(line) // 2])  # the process died inside write()

    report = verify_log(path, [signing_key.public_key()])

    assert not report.tampered
    assert report.interrupted
    assert report.verdict().startswith("INTERRUPTED")
    (finding,) = report.findings
    assert (finding.problem, finding.severity, finding.line) == (
        Problem.INTERRUPTED_APPEND,
        Severity.CRASH,
        RECORDS + 1,
    )


def test_invalid_json_in_the_middle_is_tampering(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    edit_line(path, 9, b'"kind":', b'"kind"')

    found = problems(path, signing_key)

    assert found[0] == (Problem.MALFORMED, 10, None)


def test_a_log_without_checkpoints_proves_nothing(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    checkpoints_path(path).unlink()

    assert problems(path, signing_key) == [(Problem.NO_CHECKPOINT, None, None)]


def test_a_log_re_signed_with_another_key_fails_when_the_key_is_pinned(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """An intruder rewrites a record, signs the log with their own key and replaces LOG.pub."""
    path = write_log()
    intruder = create_signing_key(tmp_path / "intruder.key")
    edit_line(path, 5, b'"decision":"deny"', b'"decision":"allow"')
    rewrite_lines(path, lambda lines: lines[:5])  # keep a consistent prefix, then re-sign it
    checkpoints_path(path).unlink()
    public_path(path).unlink()
    with AuditLog.open(path, EU_REGIONAL, intruder) as log:
        for event in round_events(1)[4:]:
            log.record(event)

    assert verify_log(path).ok  # the unpinned check trusts the key next to the log ...
    assert any(f.problem is Problem.UNPINNED_KEY for f in verify_log(path).findings)
    pinned = verify_log(path, [signing_key.public_key()])  # ... the operator's published key does not
    assert pinned.tampered
    assert {f.problem for f in pinned.findings} == {Problem.BAD_CHECKPOINT, Problem.NO_CHECKPOINT}


def test_a_rolled_back_checkpoint_file_is_tampering(
    write_log: Callable[..., Path], signing_key: Ed25519PrivateKey
) -> None:
    path = write_log()
    cp = checkpoints_path(path)
    lines = cp.read_bytes().split(b"\n")[:-1]
    cp.write_bytes(b"\n".join([*lines, lines[1]]) + b"\n")  # an old checkpoint appended again

    found = problems(path, signing_key)

    assert [(p, line) for p, line, _ in found] == [(Problem.BAD_CHECKPOINT, len(lines) + 1)]


@pytest.mark.parametrize("rounds", [1, 5])
def test_records_after_the_last_checkpoint_are_noted_not_failed(
    tmp_path: Path, signing_key: Ed25519PrivateKey, rounds: int
) -> None:
    path = tmp_path / "open.jsonl"
    log = AuditLog.open(path, EU_REGIONAL, signing_key, checkpoint_every=1000)
    for round_number in range(1, rounds + 1):
        for event in round_events(round_number):
            log.record(event)
    # The process is still running: nothing signed the new records yet.
    report = verify_log(path, [signing_key.public_key()])
    log.close()

    assert report.ok
    assert [f.problem for f in report.findings] == [Problem.UNSIGNED_TAIL]
    assert verify_log(path, [signing_key.public_key()]).findings == ()
