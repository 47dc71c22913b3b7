"""Real OS processes for the tiers of a federation on one machine: start, wait, stop, report.

Used by `jurisfed demo` and by the integration tests. Each process gets its own log file;
when one fails, the error names it and quotes the end of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class FleetError(RuntimeError):
    """A process of the federation failed to start or exited badly."""


@dataclass
class Member:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_file: Path | None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])


@dataclass
class Fleet:
    """The processes started so far, in start order; stopped in reverse."""

    directory: Path
    members: list[Member] = field(default_factory=list)

    def start(self, name: str, module: str, config: dict[str, object], *, ready: bool) -> Member:
        """Write `config` as YAML and run `python -m module --config it`; logs go to logs/NAME.log."""
        config_dir, log_dir = self.directory / "config", self.directory / "logs"
        config_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        ready_file = self.directory / "run" / f"{name}.address" if ready else None
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.unlink(missing_ok=True)
            config = {**config, "ready_file": str(ready_file)}
        config_path = config_dir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = log_dir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        member = Member(name, process, log_path, ready_file)
        self.members.append(member)
        return member

    def address_of(self, member: Member, timeout_s: float) -> str:
        """Wait until `member` reports where it serves; FleetError if it dies or takes too long."""
        assert member.ready_file is not None
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if member.ready_file.exists():
                return member.ready_file.read_text().strip()
            if member.process.poll() is not None:
                raise FleetError(
                    f"{member.name} exited with code {member.process.returncode} before serving; "
                    f"end of {member.log_path}:\n{member.log_tail()}"
                )
            time.sleep(0.1)
        raise FleetError(
            f"{member.name} did not start serving within {timeout_s:.0f} s; see {member.log_path}"
        )

    def wait_for_exit(self, members: list[Member], timeout_s: float) -> None:
        give_up = time.monotonic() + timeout_s
        for member in members:
            try:
                member.process.wait(timeout=max(0.1, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise FleetError(f"{member.name} did not exit within {timeout_s:.0f} s") from None

    def failures(self) -> list[str]:
        """A sentence for each process that exited with a non-zero code."""
        return [
            f"{m.name} exited with code {m.process.returncode}; end of {m.log_path}:\n{m.log_tail()}"
            for m in self.members
            if m.process.returncode not in (None, 0)
        ]

    def stop(self, members: list[Member] | None = None, *, grace_s: float = 15.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL what is still running after `grace_s`."""
        targets = list(reversed(members if members is not None else self.members))
        for member in targets:
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        give_up = time.monotonic() + grace_s
        for member in targets:
            try:
                member.process.wait(timeout=max(0.1, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(member.process.pid, signal.SIGKILL)
                member.process.wait()
