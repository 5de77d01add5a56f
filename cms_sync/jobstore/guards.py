"""What every SQLite writer of ours checks before a write: that the file it has open is
still the file at the path, and that SQLite's busy timeout fits the write's deadline.

Standard library only: the ingest writer's process imports it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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
