"""Group commit: concurrent writes share one SQLite transaction, and so one fsync.

A delivery must be on disk before it is acknowledged. With ``synchronous=FULL`` every
commit is an fsync, and an fsync costs milliseconds, so one transaction per delivery
caps ingest at a few hundred per second and makes each delivery wait behind the others.
Here a dedicated thread owns one connection. Requests from the event loop are queued;
whenever the thread is free it takes *everything* queued, runs the requests in one
``BEGIN IMMEDIATE`` transaction, commits once, and only then resolves the futures, with
one wake-up of the event loop per batch. No request waits on a timer: a batch is
whatever arrived while the previous one was being written.

If a request fails, the batch is rolled back and run again with a savepoint around
each request, so that only the failing one fails. Savepoints are not the first try
because every statement is a round trip for the GIL, which this thread shares with a
busy event loop: without them a batch takes half the statements.

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
from typing import Any, Generic, Protocol, TypeVar

from cms_sync.errors import StoreUnavailable
from cms_sync.jobstore.transactions import fit_busy_timeout, write_batch

T = TypeVar("T")


class Lock(Protocol):
    """A lock with a timeout: :class:`~.writelock.WriteLock`, or a thread lock."""

    def acquire(self, *, timeout: float) -> bool: ...

    def release(self) -> None: ...


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
        write_lock: taken around every write transaction by every writer of the
            database (:class:`~.writelock.WriteLock`), so that writers hand over at once
            instead of polling SQLite's busy handler.
        check: called on the thread before each batch; raises StoreUnavailable when the
            store must not be written (its file is gone, say).
    """

    conn: sqlite3.Connection
    write_lock: Lock
    check: Callable[[], None] = lambda: None
    name: str = "cms-sync-writes"
    batches: int = 0  # transactions committed; for benchmarks and tests
    _queue: queue.SimpleQueue[_Request[Any] | None] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _busy_ms: int | None = None  # the busy_timeout this object set on the connection

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
        late = StoreUnavailable("job store: busy: not written in time")
        live: list[_Request[Any]] = []
        settled: list[tuple[_Request[Any], Any]] = []
        for r in batch:
            if r.deadline > now and not r.future.cancelled():
                live.append(r)
            else:
                settled.append((r, late))
        try:
            if not live:
                return
            try:
                self.check()
            except StoreUnavailable as exc:
                settled += [(r, exc) for r in live]
                return
            if not self.write_lock.acquire(timeout=_remaining(live)):
                held = StoreUnavailable("job store: busy: the write lock is held")
                settled += [(r, held) for r in live]
                return
            try:
                outcomes = self._transaction(live)
            finally:
                self.write_lock.release()
            settled += zip(live, outcomes, strict=True)
        finally:
            _settle(settled)

    def _transaction(self, batch: list[_Request[Any]]) -> list[Any]:
        """One transaction for the batch: every request at once, and only if one of them
        fails, again with a savepoint each, so that it alone fails."""
        # SQLite's lock (another process may hold it): wait no longer than allowed. The
        # pragma is a statement (a round trip for the GIL): set again only when off.
        try:
            self._busy_ms = fit_busy_timeout(self.conn, _remaining(batch), self._busy_ms)
        except sqlite3.Error as exc:
            return [StoreUnavailable(f"job store: {exc}")] * len(batch)
        try:
            written = write_batch(self.conn, batch, lambda r: r.fn(self.conn))
        except sqlite3.Error as exc:
            return [StoreUnavailable(f"job store: {exc}")] * len(batch)
        self.batches += 1
        return [
            StoreUnavailable(f"job store: {r}") if isinstance(r, sqlite3.Error) else r
            for r in written
        ]


def _remaining(batch: list[_Request[Any]]) -> float:
    return max(0.0, min(r.deadline for r in batch) - time.monotonic())


def _settle(settled: list[tuple[_Request[Any], Any]]) -> None:
    """Hand each outcome to its caller's loop: one wake-up per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request[Any], Any]]] = {}
    for request, outcome in settled:
        by_loop.setdefault(request.loop, []).append((request, outcome))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[_Request[Any], Any]]) -> None:
    for request, outcome in pairs:
        if request.future.done():  # the caller gave up (timed out or went away)
            continue
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)
