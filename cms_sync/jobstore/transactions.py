"""What every SQLite writer of ours does around a transaction: check that the file it has
open is still the file at the path, fit SQLite's busy timeout to the write's deadline,
and write a batch of requests so that one that fails fails alone.

Standard library only: the ingest writer's process imports it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: How much shorter than the earliest deadline SQLite's busy timeout may be left, rather
#: than set again (the pragma is a statement): a batch given up that early gets a 503.
BUSY_SLACK_MS = 250


def file_problem(path: Path, identity: tuple[int, int]) -> str | None:
    """Why the file at ``path`` is no longer the one opened as ``identity`` (device,
    inode), or None while it is: a store must not acknowledge into a file no restart
    would find."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "the file (or its directory) is gone"
    except OSError as exc:
        return f"cannot stat it: {exc.strerror}"
    if (stat.st_dev, stat.st_ino) != identity:
        return "another file is at the path now"
    return None


def lost_message(path: Path, problem: str) -> str:
    return f"job store lost: {path}: {problem}; restart to reopen"


def fit_busy_timeout(conn: sqlite3.Connection, remaining: float, current_ms: int | None) -> int:
    """Set SQLite's busy timeout (how long a write waits for another program's lock) so
    that it ends before ``remaining`` seconds; return what it is now.

    It is set again only when the wait it allows is off by more than the slack; set, it
    falls a little short of the deadline (half the slack, or a quarter of a short wait),
    so that the next batches, whose deadlines are a few milliseconds nearer, still find
    it in range.

    Raises:
        sqlite3.Error: the pragma failed.
    """
    wanted = max(1, int(remaining * 1000))
    if current_ms is not None and wanted - BUSY_SLACK_MS <= current_ms <= wanted:
        return current_ms
    busy = max(1, wanted - min(BUSY_SLACK_MS // 2, wanted // 4))
    conn.execute(f"PRAGMA busy_timeout = {busy}")
    return busy


def write_batch(
    conn: sqlite3.Connection, batch: Sequence[T], run: Callable[[T], R]
) -> list[R | Exception]:
    """``run`` each request of ``batch`` in one ``BEGIN IMMEDIATE`` transaction and commit
    it; each request's result, or the exception it raised.

    All together first; only if one of them raises, all again with a savepoint each, so
    that it alone fails (savepoints are not the first try: each is three more statements).

    Raises:
        sqlite3.Error: the transaction itself failed (it is rolled back): none is written.
    """
    outcomes = _committed(conn, batch, run, isolated=False)
    if outcomes is None:
        outcomes = _committed(conn, batch, run, isolated=True)
    assert outcomes is not None
    return outcomes


def _committed(
    conn: sqlite3.Connection, batch: Sequence[T], run: Callable[[T], R], *, isolated: bool
) -> list[R | Exception] | None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        outcomes = _isolated(conn, batch, run) if isolated else _together(batch, run)
        if outcomes is None:
            conn.execute("ROLLBACK")
            return None
        conn.execute("COMMIT")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _together(batch: Sequence[T], run: Callable[[T], R]) -> list[R | Exception] | None:
    outcomes: list[R | Exception] = []
    for request in batch:
        try:
            outcomes.append(run(request))
        except Exception:  # noqa: BLE001 - the isolated run tells which one failed
            return None
    return outcomes


def _isolated(
    conn: sqlite3.Connection, batch: Sequence[T], run: Callable[[T], R]
) -> list[R | Exception]:
    outcomes: list[R | Exception] = []
    for request in batch:
        conn.execute("SAVEPOINT request")
        try:
            outcomes.append(run(request))
        except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
            conn.execute("ROLLBACK TO request")
            outcomes.append(exc)
        conn.execute("RELEASE request")
    return outcomes
