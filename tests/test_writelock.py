"""The database's write lock: one writer at a time, in turns, within a timeout.

Each WriteLock opens the lock files anew, so two of them in one process stand for two
processes: an flock belongs to an open file, not to a process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cms_sync.jobstore.writelock import WriteLock, lock_path


def test_a_held_lock_is_refused_by_the_timeout_and_taken_once_released(tmp_path: Path) -> None:
    path = lock_path(tmp_path / "jobs.db")
    first, second = WriteLock(path), WriteLock(path)
    assert first.acquire(timeout=1)
    started = time.monotonic()
    assert not second.acquire(timeout=0.05)
    assert 0.05 <= time.monotonic() - started < 1
    first.release()
    assert second.acquire(timeout=1)
    second.release()
    first.close()
    second.close()


def test_a_writer_that_always_wants_the_lock_cannot_keep_another_out(tmp_path: Path) -> None:
    # The worker's writes may follow one another without pause; a delivery waiting for
    # the lock must still get it at the next release, not whenever its polls happen to
    # fall between two of them.
    path = lock_path(tmp_path / "jobs.db")
    busy, waiting = WriteLock(path), WriteLock(path)
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            if busy.acquire(timeout=5):
                time.sleep(0.002)  # a transaction
                busy.release()  # ... and at once the next one

    thread = threading.Thread(target=hog)
    thread.start()
    waits = []
    try:
        time.sleep(0.01)
        for _ in range(20):
            started = time.monotonic()
            taken = waiting.acquire(timeout=2)
            waits.append(time.monotonic() - started if taken else None)
            if taken:
                waiting.release()
    finally:
        stop.set()
        thread.join()
    assert None not in waits
    assert max(w for w in waits if w is not None) < 0.5  # a turn, not the deadline


def test_lock_files_sit_beside_the_database(tmp_path: Path) -> None:
    lock = WriteLock(lock_path(tmp_path / "jobs.db"))
    lock.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "jobs.db-writer.gate",
        "jobs.db-writer.lock",
    ]
