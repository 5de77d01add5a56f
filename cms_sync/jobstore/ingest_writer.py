"""The ingest writer: a process of its own that writes deliveries into the SQLite store.

    python -m cms_sync.jobstore.ingest_writer DATABASE DEVICE INODE

A delivery is acknowledged only once it is on disk. Written from the service's own
process, on a thread, every SQLite statement and the commit hand the GIL back and forth
with an event loop that is busy with the next deliveries; measured over sockets, that
store path cost the service about as much CPU a delivery as everything else it does
(``bench/README.md``). This process owns the ingest connection instead: it has a GIL and
a CPU of its own, the service's loop only sends it requests and reads its answers over
two pipes, and the service's worker and operators write through their own connections,
taking turns with it through :class:`~cms_sync.jobstore.writelock.WriteLock`.

What it does with what arrives: every request read while the previous batch was being
written goes in the next one, in one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, and only then is any of them answered (group commit). A request
that fails is isolated with a savepoint, so that it alone fails. Each request carries a
deadline (``time.monotonic()``, one clock for every process of the machine): the writer
waits for the lock no longer than the earliest deadline of its batch and answers
"unavailable" past it, which the service turns into a 503. Before each batch it checks
that the file at the path is still the one it opened (device and inode); once it is not,
every answer is "lost".

The protocol: frames on standard input and output, each a 4-byte big-endian length and
that many bytes of :mod:`marshal` (lists, strings, numbers, booleans and None; both ends
are the same interpreter, and marshal costs a fifth of what JSON does). The writer's
first frame is ``["ready"]`` (or ``["failed", why]`` before it exits). Each request
frame is a list of requests; each answer frame a list of outcomes, one for each request
of the batch in order, ``["ok", result]``, ``["unavailable", why]`` or ``["lost", why]``.
Requests:

- ``["accept", deadline, key, now, [[document, operation, not_before, source], ...]]``:
  a delivery: its idempotency key (or None), then its jobs, queued or folded into the
  document's pending job; the result is ``[duplicate, queued, coalesced]``;
- ``["probe", deadline, now, size]``: rewrite ``/readyz``'s row of ``size`` bytes.

The writer ends when its input ends. It ignores SIGINT and SIGTERM: they reach it with
the service's, whose shutdown closes its input once the last delivery is answered.

Standard library only, so that it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import marshal
import os
import pickle
import signal
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cms_sync.jobstore.transactions import (
    file_problem,
    fit_busy_timeout,
    lost_message,
    write_batch,
)
from cms_sync.jobstore.writelock import WriteLock, lock_path

_LENGTH = struct.Struct(">I")
#: The largest frame either side accepts: a batch of deliveries, each of bounded size.
MAX_FRAME = 64 * 1024 * 1024

# -- the SQL of queueing, shared with the store (cms_sync.jobstore.sqlite) -------------
#: A delivery's key: ``rowcount`` 0 when it was seen before.
INSERT_KEY = "INSERT INTO inbox (idempotency_key, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
#: Fold a request into the document's pending job. A delivery leaves a backoff alone (an
#: editor saving every second must not make a conflicting job due every second); a
#: replay (``reset``) is an operator's say-so: due now, attempts from zero.
FOLD_INTO_PENDING = (
    "UPDATE jobs SET run_after = CASE WHEN :reset THEN :now ELSE run_after END, "
    "updated_at = :now, read_retries = 0, operation = coalesce(:op, operation), "
    "not_before = CASE WHEN :tt IS NULL THEN not_before "
    "  WHEN not_before IS NULL THEN :tt ELSE max(not_before, :tt) END, "
    "source = CASE WHEN :reset THEN :source ELSE source END, "
    "delivery_id = CASE WHEN :reset THEN :did ELSE coalesce(:did, delivery_id) END, "
    "attempts = CASE WHEN :reset THEN 0 ELSE attempts END "
    "WHERE document_id = :doc AND state = 'pending'"
)
INSERT_PENDING = (
    "INSERT INTO jobs (document_id, state, run_after, operation, not_before, source, "
    "delivery_id, created_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
)
PROBE = (
    "INSERT INTO probe (id, at, pad) VALUES (1, :at, zeroblob(:pad)) "
    "ON CONFLICT (id) DO UPDATE SET at = :at, pad = zeroblob(:pad)"
)

#: A request to queue one document: (document, operation, not_before, source).
Queued = tuple[str, str | None, float | None, str]


def queue(
    conn: sqlite3.Connection,
    requests: Sequence[Queued],
    *,
    now: float,
    reset: bool,
    delivery_id: str | None,
) -> tuple[list[str], list[str]]:
    """Queue each document, or fold it into its pending job; (queued, coalesced)."""
    queued: list[str] = []
    coalesced: list[str] = []
    for document, operation, not_before, source in requests:
        params = {
            "now": now,
            "op": operation,
            "tt": not_before,
            "source": source,
            "reset": reset,
            "doc": document,
            "did": delivery_id,
        }
        if conn.execute(FOLD_INTO_PENDING, params).rowcount:
            coalesced.append(document)
            continue
        conn.execute(
            INSERT_PENDING,
            (document, now, operation, not_before, source, delivery_id, now, now),
        )
        queued.append(document)
    return queued, coalesced


def accept(
    conn: sqlite3.Connection, key: str | None, now: float, requests: Sequence[Queued]
) -> list[Any]:
    """One delivery: ``[duplicate, queued, coalesced]``."""
    if key is not None and not conn.execute(INSERT_KEY, (key, now)).rowcount:
        return [True, [], []]
    queued, coalesced = queue(conn, requests, now=now, reset=False, delivery_id=key)
    return [False, queued, coalesced]


def probe(conn: sqlite3.Connection, now: float, size: int) -> None:
    conn.execute(PROBE, {"at": now, "pad": size})


# -- frames -----------------------------------------------------------------------------
def frame(value: Any, dumps: Callable[[Any], bytes] = marshal.dumps) -> bytes:
    data = dumps(value)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Frames out of a byte stream that arrives in pieces (:mod:`marshal` unless told)."""

    def __init__(self, loads: Callable[[bytes], Any] = marshal.loads) -> None:
        self._buffer = b""
        self._loads = loads

    def feed(self, data: bytes) -> list[Any]:
        """The frames ``data`` completes, decoded.

        Raises:
            ValueError: a frame longer than :data:`MAX_FRAME`, or not one value.
        """
        self._buffer += data
        found = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ValueError(f"a frame of {length} bytes")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            # Only ever from the other end of our own pipe, the same interpreter.
            try:
                found.append(self._loads(self._buffer[_LENGTH.size : end]))
            except (ValueError, EOFError, TypeError, pickle.UnpicklingError) as exc:
                raise ValueError(f"a frame that is not one value: {exc}") from None
            self._buffer = self._buffer[end:]
        return found

    @property
    def partial(self) -> bool:
        return bool(self._buffer)


# -- the writer -------------------------------------------------------------------------
class Writer:
    """Writes batches of requests on one connection; see the module's docstring."""

    def __init__(
        self, conn: sqlite3.Connection, database: Path, identity: tuple[int, int], lock: WriteLock
    ) -> None:
        self._conn = conn
        self._database = database
        self._identity = identity
        self._lock = lock
        self._lost: str | None = None
        self._busy_ms: int | None = None

    def write(self, requests: list[list[Any]]) -> list[list[Any]]:
        """Each request's outcome, in order, once the batch is committed (or failed)."""
        now = time.monotonic()
        live = [n for n, r in enumerate(requests) if r[1] > now]
        outcomes: list[list[Any]] = [
            ["unavailable", "job store: busy: not written in time"] for _ in requests
        ]
        if not live:
            return outcomes
        lost = self._check_file()
        if lost is not None:
            return [["lost", lost] for _ in requests]
        remaining = min(requests[n][1] for n in live) - now
        if not self._lock.acquire(timeout=remaining):
            for n in live:
                outcomes[n] = ["unavailable", "job store: busy: the write lock is held"]
            return outcomes
        try:
            written = self._transaction([requests[n] for n in live], remaining)
        finally:
            self._lock.release()
        for n, outcome in zip(live, written, strict=True):
            outcomes[n] = outcome
        return outcomes

    def _check_file(self) -> str | None:
        if self._lost is None:
            problem = file_problem(self._database, self._identity)
            if problem is None:
                return None
            self._lost = lost_message(self._database, problem)
        return self._lost

    def _transaction(self, batch: list[list[Any]], remaining: float) -> list[list[Any]]:
        """The batch in one transaction; only if a request fails, again with a savepoint
        each, so that it alone fails."""
        # SQLite's own lock (another program may hold it): wait no longer than allowed.
        try:
            self._busy_ms = fit_busy_timeout(self._conn, remaining, self._busy_ms)
        except sqlite3.Error as exc:
            return [_unavailable(exc)] * len(batch)
        try:
            written = write_batch(self._conn, batch, self._run)
        except sqlite3.Error as exc:
            return [_unavailable(exc)] * len(batch)
        return [_unavailable(r) if isinstance(r, Exception) else ["ok", r] for r in written]

    def _run(self, request: list[Any]) -> Any:
        kind = request[0]
        if kind == "accept":
            _, _, key, now, jobs = request
            return accept(self._conn, key, now, [tuple(job) for job in jobs])
        if kind == "probe":
            _, _, now, size = request
            probe(self._conn, now, size)
            return None
        raise ValueError(f"unknown request {kind!r}")


def _unavailable(exc: Exception) -> list[Any]:
    return ["unavailable", f"job store: {exc}"]


# -- the process ------------------------------------------------------------------------
def _requests(stdin: int) -> Iterator[list[list[Any]]]:
    """Batches: every request that has arrived, once at least one whole frame has."""
    frames = Frames()
    while True:
        data = os.read(stdin, 1 << 20)
        if not data:
            return
        batch = [request for found in frames.feed(data) for request in found]
        while frames.partial:  # the rest of a frame is on its way
            more = os.read(stdin, 1 << 20)
            if not more:
                return
            batch += [request for found in frames.feed(more) for request in found]
        yield batch


def _send(stdout: int, value: Any) -> None:
    data = memoryview(frame(value))
    while data:
        data = data[os.write(stdout, data) :]


def _open(database: Path) -> sqlite3.Connection:
    uri = f"{database.absolute().as_uri()}?mode=rw"  # never makes a database
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"not in WAL mode ({mode})")
    conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk when it returns
    return conn


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    database, device, inode = Path(argv[0]), int(argv[1]), int(argv[2])
    try:
        conn = _open(database)
        lock = WriteLock(lock_path(database))
    except (sqlite3.Error, OSError) as exc:
        _send(stdout, ["failed", f"cannot open {database}: {exc}"])
        return 1
    writer = Writer(conn, database, (device, inode), lock)
    _send(stdout, ["ready"])
    for batch in _requests(stdin):
        _send(stdout, writer.write(batch))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
