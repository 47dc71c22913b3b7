"""The regional runbook, followed on this machine with processes instead of pods.

The commands are not copied here: they are the `sh` blocks of docs/runbook-regional.md (and of
docs/runbook-ml-team.md) marked `<!-- runbook: NAME -->`, run in one bash session in the order
below, which is the order the runbook tells a reader to follow. A global aggregator, an EU
regional with its own certificate and a rehearsal-signed policy, and two silos run one round;
then the regional's certificate is rotated, it is drained, restarted, killed and recovered.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
REGIONAL_RUNBOOK = ROOT / "docs" / "runbook-regional.md"
ML_RUNBOOK = ROOT / "docs" / "runbook-ml-team.md"
BLOCK = re.compile(r"^<!-- runbook: ([a-z0-9-]+) -->\n```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# The reader's path through the two runbooks. Rotation (regional section 8) is: a new
# certificate, a drain (section 9), a start (section 4), a health check (section 5), and then
# the old certificate's revocation.
SEQUENCE = (
    (REGIONAL_RUNBOOK, "environment"),
    (REGIONAL_RUNBOOK, "rehearsal-environment"),
    (REGIONAL_RUNBOOK, "rehearsal-certificates"),
    (REGIONAL_RUNBOOK, "certificate"),
    (REGIONAL_RUNBOOK, "token"),
    (REGIONAL_RUNBOOK, "rehearsal-token"),
    (REGIONAL_RUNBOOK, "rehearsal-policy"),
    (REGIONAL_RUNBOOK, "policy"),
    (REGIONAL_RUNBOOK, "rehearsal-global"),
    (REGIONAL_RUNBOOK, "configure"),
    (REGIONAL_RUNBOOK, "start"),
    (REGIONAL_RUNBOOK, "health"),
    (REGIONAL_RUNBOOK, "admit-silos"),
    (REGIONAL_RUNBOOK, "rehearsal-silos"),
    (REGIONAL_RUNBOOK, "rounds"),
    (REGIONAL_RUNBOOK, "logs"),
    (REGIONAL_RUNBOOK, "metrics"),
    (ML_RUNBOOK, "ml-environment"),
    (ML_RUNBOOK, "ml-watch"),
    (REGIONAL_RUNBOOK, "rotate"),
    (REGIONAL_RUNBOOK, "drain"),
    (REGIONAL_RUNBOOK, "start"),
    (REGIONAL_RUNBOOK, "health"),
    (REGIONAL_RUNBOOK, "revoke"),
    (REGIONAL_RUNBOOK, "crash"),
    (REGIONAL_RUNBOOK, "rehearsal-stop"),
    # After the global stopped: its last signed checkpoint covers round 1.
    (ML_RUNBOOK, "ml-evidence"),
)
RUN_TIMEOUT_S = 420
# How tier_main reports a process that exits with status 2, 3 or 4, and an unhandled exception.
FATAL = re.compile(r'"message": "(cannot start|gave up|refused): |^Traceback \(most recent call last\)')


def runbook_blocks(path: Path) -> dict[str, str]:
    """The marked command blocks of a runbook, by name, in document order."""
    found: dict[str, str] = {}
    for match in BLOCK.finditer(path.read_text()):
        name, body = match.group(1), match.group(2)
        assert name not in found, f"{path.name}: two blocks are named {name!r}"
        found[name] = body
    return found


def script() -> str:
    blocks = {path: runbook_blocks(path) for path in (REGIONAL_RUNBOOK, ML_RUNBOOK)}
    parts = ["set -euo pipefail"]
    for path, name in SEQUENCE:
        parts += [f"echo '### {path.name}: {name}'", blocks[path][name]]
    return "\n".join(parts) + "\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_every_marked_block_is_on_the_readers_path() -> None:
    for path in (REGIONAL_RUNBOOK, ML_RUNBOOK):
        marked = set(runbook_blocks(path))
        followed = {name for source, name in SEQUENCE if source == path}
        assert marked == followed, (
            f"{path.name}: marked but not run {marked - followed}, run but gone {followed - marked}"
        )


def test_the_runbook_names_only_commands_that_exist() -> None:
    text = REGIONAL_RUNBOOK.read_text() + ML_RUNBOOK.read_text()
    commands = set(re.findall(r"\bjurisfed ((?:round|policy|audit|pki|demo) [a-z-]+)", text))
    existing = set()
    for group in ("round", "policy", "audit", "pki"):
        helped = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "jurisfed"), group, "--help"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        existing |= {f"{group} {action}" for action in re.findall(r"^    ([a-z-]+)\s", helped, re.MULTILINE)}
    missing = sorted(command for command in commands - existing if not _announced(text, command))
    assert not missing, f"the runbooks describe commands that do not exist: {missing}"


def _announced(text: str, command: str) -> bool:
    """Every paragraph that mentions `command` says it is '(coming with issue N)'."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if f"jurisfed {command}" in " ".join(p.split())]
    return all(re.search(r"coming with issue \d", " ".join(p.split())) for p in paragraphs)


@pytest.mark.slow
def test_following_the_regional_runbook_runs_a_round(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    jf = tmp_path / "regional-eu"
    rehearsal = tmp_path / "rehearsal"
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JURISFED_SRC": str(ROOT),
        "JF": str(jf),
        "REHEARSAL": str(rehearsal),
        "REGIONAL_PORT": str(free_port()),
        "GLOBAL_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        ["bash", "-c", script()],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    give_up = time.monotonic() + RUN_TIMEOUT_S
    try:
        while True:
            try:
                output, _ = process.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                fatal = _fatal_log_line(jf, rehearsal)
                if fatal is None and time.monotonic() < give_up:
                    continue
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            reason = (
                f"a process failed: {fatal}" if fatal else f"the runbook did not finish in {RUN_TIMEOUT_S} s"
            )
            pytest.fail(f"{reason}\n{output[-6000:]}\n{_logs(jf, rehearsal)}")
    finally:
        _stop_group(process.pid)
    assert process.returncode == 0, f"{output[-6000:]}\n{_logs(jf, rehearsal)}"

    # The policy was verified as approved, the regional came up healthy, the round committed with EU.
    assert "APPROVED" in output
    assert f"127.0.0.1:{env['REGIONAL_PORT']}: SERVING" in output
    assert re.search(r"round 1: committed; EU \(\d+ examples, .*model [0-9a-f]{12}\)", output), output
    assert "EU regional: 2 silos registered (eu-silo-1, eu-silo-2)" in output
    # The regional's Prometheus endpoint counted both silos of the round.
    assert re.search(r"^jurisfed_round_participants(\{[^}]*\})? 2(\.0)?$", output, re.MULTILINE), output
    # The audit evidence is where the ML runbook says.
    assert (rehearsal / "global" / "evidence-round-1" / "evidence.html").is_file()
    assert output.count("result:    VERIFIED") == 3  # regional after the round and after the crash; global
    # Rotation: the regional now serves with a new key and certificate; the old one is revoked.
    old = x509.load_pem_x509_certificate((jf / "tls.old" / "tls.crt").read_bytes())
    new = x509.load_pem_x509_certificate((jf / "tls" / "tls.crt").read_bytes())
    assert new.serial_number != old.serial_number
    assert (jf / "tls" / "tls.key").read_bytes() != (jf / "tls.old" / "tls.key").read_bytes()
    assert f"revoked jurisfed://EU/regional/regional-eu (serial {old.serial_number:X})" in output
    assert f"revoked:     serial {old.serial_number:X} revoked " in output  # in the list the regional reads
    assert (jf / "tls" / "tls.key").stat().st_mode & 0o077 == 0
    # Three starts (first, after rotation and drain, after the crash); the drain was a clean stop.
    log = (jf / "regional.log").read_text()
    assert log.count('"message": "serving"') == 3
    assert '"signal": "SIGTERM"' in log
    assert log.count('"message": "stopped"') >= 1


def _stop_group(pgid: int) -> None:
    """Whatever the runbook left running (it stops its processes itself) gets 15 s, then SIGKILL."""
    give_up = time.monotonic() + 15
    while time.monotonic() < give_up:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _fatal_log_line(jf: Path, rehearsal: Path) -> str | None:
    """The line with which a tier gave up (tier_main's exit messages, or a traceback), if any."""
    for log in [jf / "regional.log", *sorted(rehearsal.glob("*/*.log"))]:
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                if FATAL.search(line):
                    return f"{log.name}: {line}"
    return None


def _logs(jf: Path, rehearsal: Path) -> str:
    tails = []
    for log in [jf / "regional.log", *sorted(rehearsal.glob("*/*.log"))]:
        if log.exists():
            tails.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(tails)
