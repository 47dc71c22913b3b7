"""Append-only JSON-lines files: one writer at a time, every append on disk before it returns.

A record is one line written with a single ``write`` and then ``fsync``ed; only after that does
the caller acknowledge anything. A crash mid-write leaves at most one last line without its
newline: the *torn tail*, which `drop_torn_tail` removes (it was never acknowledged) and which
verification reports as an interrupted append rather than as tampering.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from jurisfed.audit.errors import AuditUnavailable
from jurisfed.errors import ConfigError
from jurisfed.store.files import fsync_directory

FILE_MODE = 0o640


class AppendOnlyFile:
    """An exclusively locked file that only grows, one durable line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        except OSError as error:
            raise ConfigError(f"cannot open {path}: {error.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(f"{path} is already open for writing by another process") from None
        if created:
            fsync_directory(path.parent)
        self._length = os.fstat(self._fd).st_size
        self._broken: str | None = None

    @property
    def length(self) -> int:
        return self._length

    def read(self) -> bytes:
        return os.pread(self._fd, self._length, 0)

    def drop_torn_tail(self) -> bytes:
        """Remove bytes after the last newline (an append a crash interrupted); returns them."""
        data = self.read()
        keep = data.rfind(b"\n") + 1
        torn = data[keep:]
        if torn:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
            self._length = keep
        return torn

    def append_line(self, line: bytes) -> None:
        """Write `line` and a newline, and return only once both are on disk."""
        if self._broken is not None:
            raise AuditUnavailable(f"{self.path} cannot be written: {self._broken}")
        data = line + b"\n"
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as error:
            self._undo(error)
            raise AuditUnavailable(f"cannot write to {self.path}: {error.strerror}") from None
        self._length += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def _undo(self, error: OSError) -> None:
        """Take a partial line back out, so the next append does not glue onto it."""
        try:
            os.ftruncate(self._fd, self._length)
            os.fsync(self._fd)
        except OSError:
            self._broken = f"a failed append ({error.strerror}) could not be rolled back"
