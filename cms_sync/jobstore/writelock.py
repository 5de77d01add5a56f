"""One writer at a time among the processes that use a SQLite database, taking turns.

SQLite serialises writers itself, but a writer that finds the lock taken polls it from
its busy handler, sleeping 1, 2, 5, 10 ms and longer between tries: two writers that
take turns often (the ingest writer's process and the worker's writes) would each wait
milliseconds for a lock that was free long before, and one that writes without pause
could keep the other out until its deadline. So every writer of ours first takes this
lock, and only then SQLite's, which it then finds free unless another program holds it.

It is two ``flock``\\ s, ``<database>-writer.lock`` and ``-writer.gate``: a writer takes
the gate, then the lock, then lets the gate go. A writer that wants the lock again
right after releasing it must pass the gate, which the writer waiting for the lock
holds, so two writers that both always want it alternate. A waiting writer tries again
after 0.1 ms, then after twice as long each time, up to 1 ms. A thread lock beside them
orders this process's own threads (an ``flock`` is held per open file, not per thread).

Standard library only: the ingest writer's process imports it. Not py-filelock: its
polling and the work around each try are made for locks held for seconds, not for a
thousand handovers a second, and it has no turns.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

#: How often a waiting writer tries again: at first, and at most (the wait doubles
#: between tries, so that a writer waiting a while does not wake thousands of times).
POLL_SECONDS = 0.0001
MAX_POLL_SECONDS = 0.001


def lock_path(database: Path) -> Path:
    """The lock file beside ``database`` (as SQLite puts ``-wal`` and ``-shm``)."""
    return database.with_name(database.name + "-writer.lock")


class WriteLock:
    """The database's write lock, taken in turns, with a timeout.

    Args:
        path: the lock file (see :func:`lock_path`); the gate is beside it.

    Raises:
        OSError: a lock file cannot be opened or created.
    """

    def __init__(self, path: Path) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._lock = os.open(path, flags, 0o600)
        try:
            self._gate = os.open(path.with_suffix(".gate"), flags, 0o600)
        except OSError:
            os.close(self._lock)
            raise
        self._threads = threading.Lock()

    def acquire(self, *, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False if it stayed held."""
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            if self._take(self._gate, deadline):
                try:
                    if self._take(self._lock, deadline):
                        return True
                finally:
                    fcntl.flock(self._gate, fcntl.LOCK_UN)
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    def release(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        os.close(self._lock)
        os.close(self._gate)

    @staticmethod
    def _take(fd: int, deadline: float) -> bool:
        wait = POLL_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(wait, left))
            wait = min(wait * 2, MAX_POLL_SECONDS)
