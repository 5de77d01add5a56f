"""The service's end of the ingest writer (:mod:`cms_sync.jobstore.ingest_writer`).

Requests made in one turn of the event loop go to the writer in one frame; its answers
come back in order, so a queue of futures matches them up. The writer is started on the
first request, and again on a later one if it exits (a crash, a kill): the requests in
flight when it went get :class:`StoreUnavailable` (a 503: Sanity sends them again), and a
new writer is started at most once a second, so a writer that cannot start does not
make one process per delivery. Answers are only ever matched to requests sent to the
same writer process: a writer given up on cannot acknowledge anything afterwards.

The writer keeps every request's deadline itself; this end only watches for a writer
that stops answering altogether (a hung disk, say): once the oldest request is a second
past its deadline, everything in flight fails and the writer is killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from cms_sync.errors import StoreUnavailable
from cms_sync.jobstore.ingest_writer import Frames, frame

log = structlog.get_logger(__name__)

#: How late past its deadline the oldest request may be before the writer counts as hung.
GRACE_SECONDS = 1.0
#: Bytes of requests the writer may fall behind by before new ones are refused.
MAX_BACKLOG = 16 * 1024 * 1024
#: The least time between two starts of the writer.
RESTART_SECONDS = 1.0

Outcome = list[Any]  # ["ok", result] | ["unavailable", why] | ["lost", why]


class _Writer:
    """One running writer process and the requests sent to it, oldest first."""

    def __init__(self, proc: asyncio.subprocess.Process, frames: Frames, grace: float) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.proc = proc
        self._stdin = proc.stdin
        self._waiting: collections.deque[tuple[float, asyncio.Future[Outcome]]] = (
            collections.deque()
        )
        self._outbox: list[list[Any]] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.gone: str | None = None  # why this writer takes nothing more
        self._closing = False
        self._grace = grace
        self.reader = asyncio.create_task(self._read(frames), name="cms-sync-ingest-answers")

    def send(self, request: list[Any], deadline: float) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if self.gone is not None or self._closing:
            future.set_result(["unavailable", self.gone or "job store: closed"])
            return future
        if self._stdin.transport.get_write_buffer_size() > MAX_BACKLOG:
            future.set_result(["unavailable", "job store: the ingest writer is falling behind"])
            return future
        self._outbox.append([request[0], deadline, *request[1:]])
        self._waiting.append((deadline, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)
        if self._watchdog is None:
            self._arm()
        return future

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox and self.gone is None:
            requests, self._outbox = self._outbox, []
            self._stdin.write(frame(requests))

    async def close(self) -> None:
        """Send what is waiting, end the writer's input and wait for it to finish."""
        self._closing = True
        self.flush()
        self._stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=10)
        except TimeoutError:
            self.proc.kill()
        await self.reader

    def give_up(self, why: str) -> None:
        """Fail everything in flight; this writer answers nothing more, and is killed."""
        if self.gone is None:
            self.gone = why
        waiting, self._waiting = self._waiting, collections.deque()
        self._outbox.clear()
        for _, future in waiting:
            if not future.done():
                future.set_result(["unavailable", why])
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.proc.returncode is None:
            self.proc.kill()

    async def _read(self, frames: Frames) -> None:
        assert self.proc.stdout is not None
        try:
            while data := await self.proc.stdout.read(1 << 20):
                for outcomes in frames.feed(data):
                    self._answer(outcomes)
        except ValueError as exc:  # not our protocol
            log.error("ingest_writer_garbled", error=str(exc))
        code = await self.proc.wait()
        if self._waiting or not (self._closing or self.gone):
            log.error("ingest_writer_exited", code=code, in_flight=len(self._waiting))
        self.give_up(f"job store: the ingest writer exited ({code})")

    def _answer(self, outcomes: list[Outcome]) -> None:
        if self.gone is not None:
            return  # given up on: nothing it says acknowledges anything
        for outcome in outcomes:
            if not self._waiting:
                self.give_up("job store: the ingest writer answered what it was not asked")
                return
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_result(outcome)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._waiting:
            self._arm()

    def _arm(self) -> None:
        deadline, _ = self._waiting[0]
        wait = max(0.0, deadline - time.monotonic()) + self._grace
        self._watchdog = asyncio.get_running_loop().call_later(wait, self._hung)

    def _hung(self) -> None:
        self._watchdog = None
        if self._waiting:
            log.error("ingest_writer_hung", in_flight=len(self._waiting))
            self.give_up("job store: the write did not finish in time")


class IngestProcess:
    """Starts the writer, sends it requests and hands back their results.

    Args:
        database: the store's file.
        identity: its (device, inode) as the store opened it.
        on_lost: told the writer's message once the file is no longer the one at the path.
        grace: how late past its deadline a request's answer may be before the writer
            counts as hung.
        restart_interval: the least time between two starts of the writer.
    """

    def __init__(
        self,
        database: Path,
        identity: tuple[int, int],
        *,
        on_lost: Callable[[str], None] = lambda message: None,
        grace: float = GRACE_SECONDS,
        restart_interval: float = RESTART_SECONDS,
    ) -> None:
        self._database = database
        self._identity = identity
        self._on_lost = on_lost
        self._grace = grace
        self._restart_interval = restart_interval
        self._writer: _Writer | None = None
        self._starting: asyncio.Task[_Writer] | None = None
        self._started_at = float("-inf")
        self._closed = False

    async def request(self, request: list[Any], deadline: float) -> Any:
        """Send ``request`` (its kind, then what follows the deadline in the writer's
        protocol) and return its result once the writer has committed it.

        Raises:
            StoreUnavailable: not written: the lock stayed held past ``deadline``, the
                store is lost, or the writer is not running.
        """
        writer = self._writer
        if writer is None or writer.gone is not None:
            writer = await self._start(deadline)
        kind, result = await writer.send(request, deadline)
        if kind == "ok":
            return result
        if kind == "lost":
            self._on_lost(result)
        raise StoreUnavailable(result)

    async def close(self) -> None:
        """Let the writer finish what it was sent, then stop it."""
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        if self._writer is not None:
            await self._writer.close()

    @property
    def pid(self) -> int | None:
        """The running writer's process id (tests end it to see what follows)."""
        writer = self._writer
        return None if writer is None or writer.gone is not None else writer.proc.pid

    async def _start(self, deadline: float) -> _Writer:
        if self._closed:
            raise StoreUnavailable("job store: closed")
        if self._starting is None or self._starting.done():
            if time.monotonic() - self._started_at < self._restart_interval:
                raise StoreUnavailable("job store: the ingest writer exited; restarting soon")
            self._started_at = time.monotonic()
            self._starting = asyncio.create_task(self._spawn(), name="cms-sync-ingest-start")
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + self._grace):
                return await asyncio.shield(self._starting)
        except TimeoutError:
            raise StoreUnavailable("job store: the ingest writer did not start in time") from None

    async def _spawn(self) -> _Writer:
        device, inode = self._identity
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cms_sync.jobstore.ingest_writer",
            str(self._database),
            str(device),
            str(inode),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        frames = Frames()
        first: list[Any] = []
        while not first:
            data = await proc.stdout.read(1 << 16)
            if not data:
                raise StoreUnavailable(
                    f"job store: the ingest writer exited at start ({await proc.wait()})"
                )
            first = frames.feed(data)
        if first != [["ready"]]:
            proc.kill()
            await proc.wait()
            why = first[0][1] if first[0][0] == "failed" else f"unexpected {first!r}"
            raise StoreUnavailable(f"job store: {why}")
        log.info("ingest_writer_started", pid=proc.pid)
        self._writer = _Writer(proc, frames, self._grace)
        return self._writer
