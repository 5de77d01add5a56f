"""How ``cms-sync serve`` meets the network: file limits, a connection cap, read deadlines.

Idle connections cost nothing to open and, left alone, hold a file descriptor each
forever: at the common 1024 open-files limit, 1100 connections that never send a byte
took the whole service down (every accept failed, deliveries and ``/readyz`` timed out,
and the log filled with "Too many open files"). Four defences, each cheap:

- the soft open-files limit is raised to the hard limit at start;
- connections are capped below it; above the cap, requests get 503 (uvicorn's
  ``limit_concurrency``), so the descriptors the store and the clients need are left;
- a connection must deliver a complete request (headers and body) within
  ``CMS_SYNC_READ_TIMEOUT`` seconds of opening, or of its previous response, or it is
  closed: a client that sends nothing, half its headers, or a body shorter than its
  ``Content-Length`` cannot hold a descriptor longer than that;
- a failing ``accept()`` is logged once per interval with a count, not once per try.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger(__name__)

#: Descriptors kept out of the connection cap: the job store, the outbound HTTP pools,
#: the log, and room for the listening socket and accept()s in flight.
FD_RESERVE = 128
_ACCEPT_FAILED = "socket.accept() out of system resource"


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; return (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:  # Linux refuses infinity above fs.nr_open
        target = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, hard
    return target, hard


def connection_cap(open_files: int, configured: int | None) -> int:
    """Most connections served at once: the setting, or what the file limit leaves.

    The setting is held below the limit too: a cap the descriptors cannot back is how
    the service went down.
    """
    ceiling = max(16, open_files - FD_RESERVE)
    return ceiling if configured is None else min(configured, ceiling)


class _ReadDeadline:
    """The deadline of one connection: armed while the client owes us a request.

    Armed when the connection opens and again after each response; disarmed once a
    request (headers and whole body) has arrived. A response in progress is never cut:
    at expiry, ``owes_request`` decides, and only a connection that still owes bytes is
    aborted (``abort()``: a client that stopped reading must not keep the descriptor).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        seconds: float,
        owes_request: Callable[[], bool],
    ) -> None:
        self._loop, self._transport, self._seconds = loop, transport, seconds
        self._owes_request = owes_request
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.disarm()
        if not self._transport.is_closing():
            self._handle = self._loop.call_later(self._seconds, self._expired)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expired(self) -> None:
        self._handle = None
        if not self._transport.is_closing() and self._owes_request():
            self._transport.abort()


class _WithReadDeadline(asyncio.Protocol):
    """Arms the deadline as a connection opens and disarms it as it closes; the protocol
    class it is mixed into says when the client owes a request (``_owes``)."""

    read_timeout: float = 5.0
    loop: asyncio.AbstractEventLoop
    _deadline: _ReadDeadline

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = _ReadDeadline(self.loop, transport, self.read_timeout, self._owes)
        self._deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.disarm()
        super().connection_lost(exc)

    def _owes(self) -> bool:
        raise NotImplementedError


class H11ReadDeadlineProtocol(_WithReadDeadline, H11Protocol):
    """uvicorn's h11 protocol (pure Python), with a read deadline."""

    def handle_events(self) -> None:
        super().handle_events()
        if not self._owes():
            self._deadline.disarm()  # the request is in: what follows is ours to send

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._deadline.arm()  # the next request on this connection gets the same deadline

    def _owes(self) -> bool:
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)


class HttpToolsReadDeadlineProtocol(_WithReadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol (the C parser of Node.js), with a read deadline.

    httptools may parse a pipelined request while the previous one is answered, and
    the app may answer before the body is in (413 on a declared length), so the
    protocol counts requests received and responses sent: the client owes a request
    whenever every request it completed has been answered.
    """

    _received: int = 0
    _answered: int = 0

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._received += 1
        if self._owes():  # answered before its body was in: the next one is owed
            self._deadline.arm()
        else:
            self._deadline.disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._answered += 1
        if self._owes():
            self._deadline.arm()

    def _owes(self) -> bool:
        return self._answered >= self._received


HttpParser = Literal["httptools", "h11"]


def read_deadline_protocol(
    seconds: float, parser: HttpParser = "httptools"
) -> type[H11ReadDeadlineProtocol] | type[HttpToolsReadDeadlineProtocol]:
    """uvicorn's protocol for ``parser``, closing connections that owe a request past
    ``seconds``."""
    base: type[H11ReadDeadlineProtocol] | type[HttpToolsReadDeadlineProtocol] = (
        HttpToolsReadDeadlineProtocol if parser == "httptools" else H11ReadDeadlineProtocol
    )
    return type(base.__name__, (base,), {"read_timeout": seconds})


@dataclass
class AcceptErrorLog:
    """A loop exception handler that reports failing ``accept()``s once per interval.

    asyncio reports every failed accept (EMFILE, ENFILE, ENOBUFS) through the loop's
    exception handler; under a flood of connections that is a line per attempt.
    Everything else goes on to the handler that was there before.
    """

    interval: float = 10.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0  # since the last line
    _last: float | None = None
    _previous: Any = field(default=None, repr=False)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failures += 1
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return
        exc = context.get("exception")
        log.error(
            "accept_failing",
            error=str(exc) if exc is not None else None,
            count=self.failures,
            interval=self.interval,
            message="accept() is failing: too many connections for the open-files limit",
        )
        self._last, self.failures = now, 0


class Server(uvicorn.Server):
    """uvicorn's server, which logs ``listening`` with each bound address once it
    accepts connections (``--port 0`` included: the port the system chose)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:  # the bind failed: uvicorn has said why
            return
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("listening", host=host, port=port, url=_url(host, port))


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
