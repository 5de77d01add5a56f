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
import subprocess
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


class _Pipes(asyncio.SubprocessProtocol):
    """The writer's output as it arrives: its first frame, then answers, handed to the
    :class:`_Writer` in the callback that reads them, not a turn of the loop later."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.frames = Frames()
        self.first: asyncio.Future[list[Any]] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.writer: _Writer | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if self.writer is not None and self.writer.gone is not None:
            return  # given up on: nothing it says counts
        try:
            found = self.frames.feed(data)
        except ValueError as exc:  # not our protocol
            log.error("ingest_writer_garbled", error=str(exc))
            self._fail("job store: the ingest writer said what it should not")
            return
        if self.writer is None:
            if found and not self.first.done():
                self.first.set_result(found)
            return
        for outcomes in found:
            self.writer.answer(outcomes)

    def connection_lost(self, exc: Exception | None) -> None:
        """The process exited and its pipes are closed."""
        if not self.first.done():
            self.first.set_result([])
        if self.writer is not None:
            self.writer.exited()
        if self._transport is not None:
            self._transport.close()  # the process is reaped: nothing is left to end
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, why: str) -> None:
        if self.writer is not None:
            self.writer.give_up(why)
        elif not self.first.done():
            self.first.set_result([["failed", why]])


class _Writer:
    """One running writer process and the requests sent to it, oldest first."""

    def __init__(self, transport: asyncio.SubprocessTransport, pipes: _Pipes, grace: float) -> None:
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        self.transport = transport
        self.pid = transport.get_pid()
        self._stdin = stdin
        self._pipes = pipes
        self._waiting: collections.deque[tuple[float, asyncio.Future[Outcome]]] = (
            collections.deque()
        )
        self._outbox: list[list[Any]] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.gone: str | None = None  # why this writer takes nothing more
        self._closing = False
        self._grace = grace
        pipes.writer = self

    def send(self, request: list[Any], deadline: float) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if self.gone is not None or self._closing:
            future.set_result(["unavailable", self.gone or "job store: closed"])
            return future
        if self._stdin.get_write_buffer_size() > MAX_BACKLOG:
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
            await asyncio.wait_for(asyncio.shield(self._pipes.done), timeout=10)
        except TimeoutError:
            self.transport.kill()
            await self._pipes.done
        self.transport.close()

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
        if self.transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()

    def exited(self) -> None:
        code = self.transport.get_returncode()
        if self._waiting or not (self._closing or self.gone):
            log.error("ingest_writer_exited", code=code, in_flight=len(self._waiting))
        self.give_up(f"job store: the ingest writer exited ({code})")

    def answer(self, outcomes: list[Outcome]) -> None:
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
        return None if writer is None or writer.gone is not None else writer.pid

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
        transport, pipes = await asyncio.get_running_loop().subprocess_exec(
            _Pipes,
            sys.executable,
            "-m",
            "cms_sync.jobstore.ingest_writer",
            str(self._database),
            str(device),
            str(inode),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        try:
            first = await pipes.first
        except BaseException:
            transport.kill()
            raise
        if first != [["ready"]]:
            with contextlib.suppress(ProcessLookupError):
                transport.kill()
            await pipes.done
            transport.close()
            if not first:
                raise StoreUnavailable(
                    f"job store: the ingest writer exited at start ({transport.get_returncode()})"
                )
            why = first[0][1] if first[0][0] == "failed" else f"unexpected {first!r}"
            raise StoreUnavailable(f"job store: {why}")
        writer = _Writer(transport, pipes, self._grace)
        log.info("ingest_writer_started", pid=writer.pid)
        self._writer = writer
        return writer
