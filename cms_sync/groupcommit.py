"""Group commit: concurrent writes share one SQLite transaction, and so one fsync.

A delivery must be on disk before it is acknowledged. With ``synchronous=FULL`` every
commit is an fsync, and an fsync costs milliseconds, so one transaction per delivery
caps ingest at a few hundred per second and makes each delivery wait behind the others.
Here a dedicated thread owns one connection. Requests from the event loop are queued;
whenever the thread is free it takes *everything* queued, runs each request in a
savepoint of one ``BEGIN IMMEDIATE`` transaction, commits once, and only then resolves
each request's future. No request waits on a timer: a batch is whatever arrived while
the previous one was being written.

Every request carries a deadline. The thread waits for the write lock (the in-process
one, then SQLite's, held perhaps by another process) at most until the earliest deadline
of its batch, and fails the batch with :class:`StoreUnavailable` rather than let a
delivery wait past the point where the sender gives up. A failure is never an
acknowledgement, so the safe direction is the only one possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cms_sync.errors import StoreUnavailable

T = TypeVar("T")


@dataclass
class _Request(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()


@dataclass
class GroupCommit:
    """One connection on its own thread, committing queued writes in batches.

    Args:
        conn: the connection, used only by this object's thread from now on.
        write_lock: taken around every write transaction by every connection of this
            process to the database, so in-process writers hand over at once instead of
            polling SQLite's busy handler.
        check: called on the thread before each batch; raises StoreUnavailable when the
            store must not be written (its file is gone, say).
    """

    conn: sqlite3.Connection
    write_lock: threading.Lock
    check: Callable[[], None] = lambda: None
    name: str = "cms-sync-ingest"
    batches: int = 0  # transactions committed; for benchmarks and tests
    _queue: queue.SimpleQueue[_Request[Any] | None] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    async def submit(self, fn: Callable[[sqlite3.Connection], T], *, budget: float) -> T:
        """Run ``fn`` in the next batch's transaction; return once that is committed.

        Raises:
            StoreUnavailable: the batch failed, or it could not start within ``budget``
                seconds (the caller's deadline, kept by the thread).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Request(fn, future, loop, time.monotonic() + budget))
        return await future

    def close(self) -> None:
        """Finish what is queued, stop the thread and close the connection."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        self.conn.close()

    # -- the thread -------------------------------------------------------------------
    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch: list[_Request[Any]] = [first]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run(batch)

    def _run(self, batch: list[_Request[Any]]) -> None:
        now = time.monotonic()
        live = [r for r in batch if r.deadline > now and not r.future.cancelled()]
        for r in batch:
            if r not in live:
                _settle(r, StoreUnavailable("job store: busy: not written in time"))
        if not live:
            return
        try:
            self.check()
        except StoreUnavailable as exc:
            for r in live:
                _settle(r, exc)
            return
        if not self.write_lock.acquire(timeout=_remaining(live)):
            for r in live:
                _settle(r, StoreUnavailable("job store: busy: the write lock is held"))
            return
        try:
            outcomes = self._transaction(live)
        finally:
            self.write_lock.release()
        for r, outcome in zip(live, outcomes, strict=True):
            _settle(r, outcome)

    def _transaction(self, batch: list[_Request[Any]]) -> list[Any]:
        conn = self.conn
        try:  # SQLite's lock (another process may hold it): wait no longer than allowed
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(_remaining(batch) * 1000))}")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [StoreUnavailable(f"job store: {exc}")] * len(batch)
        outcomes: list[Any] = []
        try:
            for r in batch:
                conn.execute("SAVEPOINT request")
                try:
                    outcomes.append(r.fn(conn))
                except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                    conn.execute("ROLLBACK TO request")
                    failure = StoreUnavailable(f"job store: {exc}")
                    outcomes.append(failure if isinstance(exc, sqlite3.Error) else exc)
                conn.execute("RELEASE request")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [StoreUnavailable(f"job store: {exc}")] * len(batch)
        self.batches += 1
        return outcomes


def _remaining(batch: list[_Request[Any]]) -> float:
    return max(0.0, min(r.deadline for r in batch) - time.monotonic())


def _settle(request: _Request[Any], outcome: Any) -> None:
    def resolve() -> None:
        if request.future.done():  # the caller gave up (timed out or went away)
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        request.loop.call_soon_threadsafe(resolve)
