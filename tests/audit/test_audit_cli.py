"""`jurisfed audit ...` as an operator runs it: exit status and output say whether a log verifies
and where it was changed; export writes a bundle that `verify-bundle` accepts."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_samples import edit_line, rewrite_lines

from jurisfed.audit.cli import EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from jurisfed.cli import main

KEY = "keys/audit.key.pub"  # written by the signing_key fixture under tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    status = main(["audit", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


@pytest.fixture
def log(write_log: Callable[..., Path]) -> Path:
    return write_log()


def test_keygen_writes_a_private_key_and_prints_its_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "regional-eu.key"

    status, out = run(capsys, "keygen", path)

    assert status == EXIT_OK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "regional-eu.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "fingerprint: " in out
    assert run(capsys, "keygen", path)[0] == EXIT_ERROR


def test_verify_passes_on_a_good_log(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "verify", log, "--key", tmp_path / KEY)

    assert status == EXIT_OK
    assert "result:    VERIFIED" in out
    assert "records:   19; signed up to 19" in out
    status, out = run(capsys, "verify", log, "--key", tmp_path / KEY, "--json")
    assert json.loads(out)["verdict"] == "verified"


@pytest.mark.parametrize(
    ("tamper", "where"),
    [
        (
            lambda p: edit_line(p, 5, b'"decision":"deny"', b'"decision":"allow"'),
            "edited (log line 6, sequence 5)",
        ),
        (lambda p: rewrite_lines(p, lambda lines: lines[:7] + lines[8:]), "missing (log line 8, sequence 7)"),
        (
            lambda p: rewrite_lines(p, lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]]),
            "moved (log line 4, sequence 4)",
        ),
        (lambda p: rewrite_lines(p, lambda lines: lines[:-2]), "truncated (log line 18, sequence 17)"),
    ],
    ids=["edited", "deleted", "reordered", "truncated"],
)
def test_verify_fails_on_tampering_and_says_where(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: Callable[[Path], None], where: str
) -> None:
    tamper(log)

    status, out = run(capsys, "verify", log, "--key", tmp_path / KEY)

    assert status == EXIT_FAILED
    assert "result:    FAILED" in out
    first_finding = out.split("result:")[1].splitlines()[1]
    assert f"TAMPERING {where}" in first_finding


def test_verify_reports_a_crash_apart_from_tampering(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with log.open("ab") as handle:
        handle.write(b'{"actor":{"juris')

    status, out = run(capsys, "verify", log, "--key", tmp_path / KEY)

    assert status == EXIT_INTERRUPTED
    assert "INTERRUPTED" in out
    assert "CRASH interrupted-append (log line 20, sequence 19)" in out
    assert "TAMPERING" not in out


def test_verify_explains_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "verify", tmp_path / "missing.jsonl")

    assert status == EXIT_ERROR
    assert "cannot be read" in out


def test_export_writes_a_bundle_that_verifies(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "evidence-round-2"

    status, out = run(capsys, "export", log, "--round", 2, "--out", out_dir, "--key", tmp_path / KEY)

    assert status == EXIT_OK, out
    assert "6 records of jurisfed://EU/regional/eu-1 (round 2), verified" in out
    bundle, html = out_dir / "evidence.json", out_dir / "evidence.html"
    assert "Verified." in html.read_text()
    status, out = run(capsys, "verify-bundle", bundle, "--key", tmp_path / KEY, "--log", log)
    assert status == EXIT_OK, out
    assert "result:  VERIFIED" in out

    data = json.loads(bundle.read_text())
    data["entries"][0]["record"]["rule"] = "a-kinder-rule"
    bundle.write_text(json.dumps(data))
    status, out = run(capsys, "verify-bundle", bundle, "--key", tmp_path / KEY)
    assert status == EXIT_FAILED
    assert "record 7: not in the signed log" in out


def test_export_by_range_for_another_jurisdiction(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pseudonyms.key"
    secret.write_bytes(b"s" * 32)

    status, out = run(
        capsys,
        "export",
        log,
        "--from",
        1,
        "--to",
        6,
        "--audience",
        "IN",
        "--pseudonym-key",
        secret,
        "--out",
        tmp_path / "e",
    )

    assert status == EXIT_OK, out
    assert "hospital-0" not in (tmp_path / "e" / "evidence.json").read_text()
    assert run(capsys, "export", log, "--round", 1, "--from", 1, "--out", tmp_path / "x")[0] == EXIT_ERROR
    assert run(capsys, "export", log, "--round", 99, "--out", tmp_path / "x")[0] == EXIT_ERROR


def test_export_refuses_a_tampered_log(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_line(log, 5, b'"decision":"deny"', b'"decision":"allow"')

    status, out = run(capsys, "export", log, "--round", 1, "--out", tmp_path / "e", "--key", tmp_path / KEY)

    assert status == EXIT_FAILED
    assert "does not verify" in out
    assert not (tmp_path / "e").exists()


def test_the_module_entry_point_runs(log: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jurisfed", "audit", "verify", str(log), "--key", str(tmp_path / KEY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert "VERIFIED" in done.stdout
