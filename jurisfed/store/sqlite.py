"""One SQLite transaction on a tier's embedded state file, durable and safe across processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
