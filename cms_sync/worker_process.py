"""The worker in a process of its own, beside the webhook service (``cms-sync serve``).

    python -m cms_sync.worker_process   (started by :class:`WorkerProcess`, never by hand)

The webhook's event loop answers Sanity; a worker on that loop takes turns with it. Each
job's HTTP calls and store hand-offs cost the loop CPU (9 ms a job on the development
machine), deliveries wait for those turns, and the service answered fewer of them
(``bench/README.md``). So ``serve`` runs its worker here: a child process with an event
loop, a GIL and, where the machine has one, a core of its own, on the same database.

The parent sends the child its settings, mapping and lease owner as the first frame on
the child's standard input (:mod:`pickle`, 4-byte length first; both ends are the same
interpreter and code, over a pipe nobody else holds), then one byte for each wake-up:
something was queued, look now. A wake-up crosses the pipe only when it can matter: the
child says ``("waiting",)`` each time its worker found nothing to claim and sleeps with
a slot free, and the parent sends one byte then, for the first delivery after that (or
at once, if a delivery came while the message was on its way). A busy worker, every slot
taken, costs the webhook no write at all; a byte a delivery cost both processes a
cross-core wake-up each (``bench/README.md``). The end of its input tells the child to
stop: it claims nothing more, gives running jobs the
grace period, releases the rest and exits 0. The end of input is also what the child
sees when the parent dies, however it dies, so a child never outlives its service.

The child sends frames back on a pipe of its own (its standard output, which it then
points at its standard error, so a stray ``print`` cannot garble a frame): ``("started",
pid)`` once its worker runs, ``("waiting",)`` as above, every event the worker, the
syncer and the clients emit (the parent's metrics count them; the child logs them
itself, to the standard error both share), and the rate limiter's tally whenever it
moved, for ``/metrics``.

The parent restarts a child that exits while the service runs, along a backoff (one
second, doubling to thirty, reset once a child has run a minute); ``/readyz`` answers
503 "worker is not running" meanwhile. Jobs the dead child held come back when their
lease runs out, as after any crash. The child ignores SIGINT and SIGTERM, which reach it
with the parent's from a terminal or a service manager: the parent's shutdown ends the
child's input once the webhook has stopped, as it does the ingest writer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from cms_sync.backoff import Backoff
from cms_sync.errors import CmsSyncError
from cms_sync.events import Event, Events, Fanout, LogEvents
from cms_sync.jobstore.ingest_writer import Frames, frame
from cms_sync.log import configure_logging
from cms_sync.mapping import MediaMapping
from cms_sync.ratelimit import Limit, LimitStats
from cms_sync.scrub import Scrubber
from cms_sync.settings import Settings
from cms_sync.storage import open_storage
from cms_sync.sync import open_syncer, rate_limiter
from cms_sync.worker import Worker, worker_options

log = structlog.get_logger(__name__)

#: How often the child sends the rate limiter's tally, when it moved.
LIMITS_EVERY = 1.0
#: How long the service waits at start for its worker's process to run (then it serves
#: anyway, and ``/readyz`` says 503 until it does).
START_TIMEOUT = 10.0
#: A child that ran this long before it exited restarts after the shortest wait again.
STEADY_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """What the child needs: everything else it builds from these, as ``serve`` does."""

    settings: Settings
    mapping: MediaMapping
    #: The lease owner: the host, the service's process id (the one an operator manages)
    #: and a nonce new for each child.
    owner: str


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> Any:
    return pickle.loads(data)  # noqa: S301 - only from our own process, over our own pipe


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Wakeups:
    """When a wake-up must cross the pipe to the child: once it waits for work, for the
    first delivery after that, or at once if one came while it said so."""

    def __init__(self) -> None:
        self._waiting = False  # the child sleeps with a slot free: a wake-up matters
        self._missed = False  # a delivery came while it did not: wake it once it does

    def queued(self) -> bool:
        """A delivery was queued; True: wake the child now."""
        if self._waiting:
            self._waiting = False
            return True
        self._missed = True
        return False

    def child_waits(self) -> bool:
        """The child found nothing to claim and sleeps; True: wake it now."""
        if self._missed:
            self._missed = False
            return True
        self._waiting = True
        return False


class WorkerProcess:
    """The service's handle on its worker's process: what the webhook, ``/readyz``, the
    operator page and the app's lifespan need of a worker (``wake``, ``running``,
    ``start``, ``stop``), and the rate limiter's tally for ``/metrics``.

    Args:
        spec: the child's settings and mapping (its owner is made new for each child).
        events: told every event the child reports (the metrics; the child logs them).
        stop_timeout: how long after its input ends a child may take to exit before it
            is killed (the worker's grace period and some).
        restarts: the wait before each restart.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        events: Events,
        stop_timeout: float,
        restarts: Backoff | None = None,
    ) -> None:
        self._spec = spec
        self._events = events
        self._stop_timeout = stop_timeout
        self._restarts = restarts or Backoff(
            base=1.0, maximum=30.0, max_attempts=1_000_000, jitter=0.1
        )
        self._proc: asyncio.subprocess.Process | None = None
        self._started = False
        self._stopping = asyncio.Event()
        self._wakeups = Wakeups()
        self._supervisor: asyncio.Task[None] | None = None
        self._limits: dict[Limit, LimitStats] = {}
        #: The running child's process id and lease owner (None between children).
        self.pid: int | None = None
        self.owner: str | None = None
        #: Set each time a child reports its worker running (tests wait on it).
        self.ready = asyncio.Event()

    # -- what the service asks of a worker ----------------------------------------------
    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="cms-sync-worker-process")

    async def wait_started(self, within: float) -> bool:
        """Wait until a child reports its worker running; False if none did in time."""
        try:
            async with asyncio.timeout(within):
                await self.ready.wait()
        except TimeoutError:
            return False
        return True

    @property
    def running(self) -> bool:
        return self._started and self._proc is not None and self._proc.returncode is None

    def wake(self) -> None:
        """Something was queued: tell the child, if it waits for work."""
        if self._wakeups.queued():
            self._send_wake()

    async def stop(self) -> None:
        """End the child's input, wait for its graceful stop, kill it past the timeout."""
        self._stopping.set()
        if self._proc is not None:
            self._close_input(self._proc)
        if self._supervisor is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._supervisor), timeout=self._stop_timeout)
        except TimeoutError:
            if self._proc is not None and self._proc.returncode is None:
                log.error("worker_process_killed", pid=self._proc.pid, after=self._stop_timeout)
                self._proc.kill()
            await self._supervisor

    @property
    def stats(self) -> Mapping[Limit, LimitStats]:
        """The child's rate-limiter tally, as it last reported it."""
        return self._limits

    # -- the child's life ---------------------------------------------------------------
    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                code: int | None = await self._run_one()
            except Exception as exc:  # noqa: BLE001 - it could not start, or a bug here
                log.error("worker_process_failed", error=repr(exc))
                code = None
            if self._stopping.is_set():
                return
            failures = 1 if time.monotonic() - began >= STEADY_SECONDS else failures + 1
            wait = self._restarts.delay(failures)
            log.error("worker_process_exited", code=code, restart_in=round(wait, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=wait)

    async def _run_one(self) -> int:
        owner = new_owner()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cms_sync.worker_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._proc, self.owner, self._started = proc, owner, False
        self._wakeups = Wakeups()
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(frame(replace(self._spec, owner=owner), _dumps))
        if self._stopping.is_set():  # stopped while it was starting
            self._close_input(proc)
        frames = Frames(_loads)
        heard_out = False
        try:
            while data := await proc.stdout.read(1 << 16):
                for message in frames.feed(data):
                    self._receive(message)
            heard_out = True
        finally:
            # Garbled, a bug here, or cancelled: a child nobody hears must not run on.
            self._started, self.pid = False, None
            if not heard_out and proc.returncode is None:
                proc.kill()
        return await proc.wait()

    def _receive(self, message: tuple[Any, ...]) -> None:
        match message:
            case ("event", event):
                self._events.emit(event)
            case ("limits", limits):
                self._limits = limits
            case ("waiting",):
                if self._wakeups.child_waits():
                    self._send_wake()
            case ("started", pid):
                self._started, self.pid = True, pid
                log.info("worker_process_started", pid=pid, owner=self.owner)
                self.ready.set()
            case _:
                raise ValueError(f"an unknown message {message[0]!r}")

    def _send_wake(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(b"w")

    @staticmethod
    def _close_input(proc: asyncio.subprocess.Process) -> None:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()


# -- the child --------------------------------------------------------------------------
class _Forward:
    """Events to the parent, as frames on the pipe (never blocks: the transport buffers)."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    def send(self, message: tuple[Any, ...]) -> None:
        if not self._transport.is_closing():
            self._transport.write(frame(message, _dumps))

    def emit(self, event: Event) -> None:
        self.send(("event", event))


class _Waiting:
    """Tells the parent the worker waits for work, once until the parent's next wake-up."""

    def __init__(self, forward: _Forward) -> None:
        self._forward = forward
        self.told = False

    def __call__(self) -> None:
        if not self.told:
            self.told = True
            self._forward.send(("waiting",))


class _Input(asyncio.Protocol):
    """The parent's wake-ups, and the end of its input."""

    def __init__(self, wake: Any, waiting: _Waiting, ended: asyncio.Event) -> None:
        self._wake, self._waiting, self._ended = wake, waiting, ended

    def data_received(self, data: bytes) -> None:
        self._waiting.told = False
        self._wake()

    def eof_received(self) -> bool | None:
        self._ended.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended.set()


async def _child(spec: WorkerSpec, out: int, stdin: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out, "wb"))
    forward = _Forward(transport)
    ended = asyncio.Event()
    settings = spec.settings
    events = Fanout([LogEvents(), forward])
    limiter = rate_limiter(settings)
    async with (
        open_storage(
            settings.cms_sync_database, ingest_timeout=settings.cms_sync_ingest_timeout
        ) as storage,
        open_syncer(
            settings, spec.mapping, storage.records, limiter=limiter, events=events
        ) as syncer,
    ):
        worker = Worker(
            storage.jobs,
            syncer,
            worker_options(settings),
            owner=spec.owner,
            scrub=Scrubber(settings.secret_values()),
            events=events,
            on_waiting=(waiting := _Waiting(forward)),
        )
        await loop.connect_read_pipe(
            lambda: _Input(worker.wake, waiting, ended), os.fdopen(stdin, "rb")
        )
        storage.jobs.add_waker(worker.wake)  # other replicas' jobs, where told
        worker.start()
        forward.send(("started", os.getpid()))
        sent: dict[Limit, LimitStats] = {}
        while not ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout=LIMITS_EVERY)
            if limiter.stats != sent:
                sent = {k: replace(v) for k, v in limiter.stats.items()}
                forward.send(("limits", sent))
        await worker.stop()
        if limiter.stats != sent:
            forward.send(("limits", dict(limiter.stats)))
    log.info("worker_process_stopped", owner=spec.owner)


def _read_spec(stdin: int) -> WorkerSpec:
    frames = Frames(_loads)
    while True:
        data = os.read(stdin, 1 << 16)
        if not data:
            raise SystemExit(0)  # the parent went before it told us anything
        found = frames.feed(data)
        if found:
            spec = found[0]
            if not isinstance(spec, WorkerSpec):
                raise SystemExit(f"cms_sync.worker_process: not a WorkerSpec: {type(spec)}")
            return spec


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        # They reach this process with the service's (a terminal, a service manager),
        # whose shutdown then ends our input.
        signal.signal(signum, signal.SIG_IGN)
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = sys.stdin.fileno()
    spec = _read_spec(stdin)
    settings = spec.settings
    configure_logging(
        level=settings.cms_sync_log_level,
        fmt=settings.cms_sync_log_format,
        scrub=Scrubber(settings.secret_values()),
    )
    try:
        asyncio.run(_child(spec, out, stdin))
    except CmsSyncError as exc:  # the store would not open, say: the parent restarts us
        log.error("worker_process_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    # The spec's class must be this module's, not ``__main__``'s, to unpickle.
    from cms_sync.worker_process import main as _main

    sys.exit(_main())
