"""One SQLite transaction on a tier's embedded state file, durable and safe across processes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import ClassVar

from jurisfed.errors import JurisfedError


@contextmanager
def transaction(
    path: Path, *, write: bool, busy_timeout_s: float, what: str, unavailable: type[JurisfedError]
) -> Iterator[sqlite3.Connection]:
    """A connection in one transaction, committed on success and rolled back otherwise.

    Write-ahead log with synchronous=FULL, so a commit survives a power cut; a writer takes the
    lock up front (BEGIN IMMEDIATE), so two processes never interleave a read-check-write.
    Any SQLite failure is raised as `unavailable`, naming `what` (e.g. "privacy ledger").
    """
    try:
        db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.Error as error:
        raise unavailable(f"cannot open {what} {path}: {error}") from error
    try:
        db.execute("PRAGMA synchronous = FULL")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise unavailable(f"{what} {path} cannot use a write-ahead log")
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        yield db
        db.execute("COMMIT")
    except sqlite3.Error as error:
        raise unavailable(f"{what} {path}: {error}") from error
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()


def apply_schema(
    db: sqlite3.Connection,
    statements: Iterable[str],
    *,
    version: int,
    what: str,
    unavailable: type[JurisfedError],
) -> None:
    """Run `statements` (CREATE ... IF NOT EXISTS, and the PRAGMA user_version they set) in `db`,
    first refusing, as `unavailable`, a file that a newer jurisfed wrote with a later schema."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > version:
        raise unavailable(f"{what} has schema {found}; this jurisfed reads {version}")
    for statement in statements:
        db.execute(statement)


class SqliteStore:
    """A record kept in one SQLite file: its schema made (or checked) on open, and one
    `transaction` per operation.

    A subclass names `WHAT` (for messages), `UNAVAILABLE` (the error every SQLite failure
    becomes) and `SCHEMA` (CREATE ... IF NOT EXISTS statements); with `SCHEMA_VERSION` a file
    written by a newer jurisfed is refused (`apply_schema`). Several stores may share one file.
    """

    WHAT: ClassVar[str]
    UNAVAILABLE: ClassVar[type[JurisfedError]]
    SCHEMA: ClassVar[tuple[str, ...]]
    SCHEMA_VERSION: ClassVar[int | None] = None

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0
    ) -> None:
        self.path = path
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        with self._transaction(write=True) as db:
            if self.SCHEMA_VERSION is None:
                for statement in self.SCHEMA:
                    db.execute(statement)
            else:
                apply_schema(
                    db,
                    self.SCHEMA,
                    version=self.SCHEMA_VERSION,
                    what=f"{self.WHAT} {path}",
                    unavailable=self.UNAVAILABLE,
                )

    def _transaction(self, *, write: bool) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(
            self.path,
            write=write,
            busy_timeout_s=self._busy_timeout_s,
            what=self.WHAT,
            unavailable=self.UNAVAILABLE,
        )
