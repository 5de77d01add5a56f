"""The embedded job store: SQLite in WAL mode with ``synchronous=FULL``.

Deliveries are written by a process of their own (:mod:`.ingest_writer`); every other
write runs whole on a thread of the store's own, and reads on another, so the event loop
never blocks on disk. Writers take turns through :class:`.writelock.WriteLock`, and
other programs are kept out by SQLite's own locking. A commit returns only once it is on
disk, so a job the webhook acknowledged survives a crash of the process (or of the
machine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from cms_sync.errors import ConfigError, StoreUnavailable
from cms_sync.filestack_notices import DELIVERY_PREFIX, StoreNotice
from cms_sync.jobs import (
    HISTORY_PER_DOCUMENT,
    RUN_COLUMNS,
    Accepted,
    BackfillRun,
    Confirmation,
    Confirmed,
    FailedJob,
    Job,
    JobRequest,
    JobRun,
    JobSource,
    JobState,
    RunningJob,
    RunOutcome,
    StoreStats,
    run_row,
)
from cms_sync.jobstore import ingest_writer
from cms_sync.jobstore.groupcommit import GroupCommit
from cms_sync.jobstore.ingest_process import IngestProcess
from cms_sync.jobstore.transactions import file_problem, lost_message
from cms_sync.jobstore.writelock import WriteLock, lock_path
from cms_sync.records import (
    ANSWERED_LATE,
    ORPHAN_COLUMNS,
    Orphan,
    StoredAsset,
    StoreGate,
    UnseenCopies,
    notice_record,
    notified_reason,
    orphan,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 6
#: What /readyz writes: more than a delivery (an inbox row and a job, with their indexes).
_PROBE_BYTES = 32 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    idempotency_key TEXT PRIMARY KEY,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_received ON inbox (received_at);

CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    operation TEXT,
    not_before REAL,  -- schema 4; was transaction_time
    source TEXT NOT NULL DEFAULT 'webhook'
        CHECK (source IN ('webhook', 'replay', 'backfill')),  -- schema 4
    read_retries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivery_id TEXT,  -- schema 5: the latest delivery's idempotency key
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_pending ON jobs (document_id) WHERE state = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_running ON jobs (document_id) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, run_after);
CREATE INDEX IF NOT EXISTS jobs_document ON jobs (document_id, state);

CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    handle TEXT NOT NULL,
    url TEXT NOT NULL,
    size INTEGER,
    mime_type TEXT,
    stored_at REAL NOT NULL
);

-- The ledger of stores whose answer never came (schema 2): see cms_sync.records.
CREATE TABLE IF NOT EXISTS store_attempts (
    asset_id TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL,           -- counted towards the cap; replay resets it
    total INTEGER NOT NULL,              -- every unanswered store ever: possible copies
    not_before REAL NOT NULL,            -- held (in flight) or backing off until then
    storage_key TEXT,
    last_error TEXT,
    first_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- Which documents asked for the asset: replaying one of them resets its count.
CREATE TABLE IF NOT EXISTS store_attempt_documents (
    asset_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    PRIMARY KEY (asset_id, document_id)
);
CREATE INDEX IF NOT EXISTS store_attempt_documents_doc
    ON store_attempt_documents (document_id);

-- Sweeps of existing documents (cms-sync backfill): where each one has got to.
CREATE TABLE IF NOT EXISTS backfills (
    name TEXT PRIMARY KEY,
    cursor TEXT,
    total INTEGER,
    swept INTEGER NOT NULL DEFAULT 0,
    queued INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);

-- Each granted store (schema 5), so that a notified handle can be explained: error is the
-- answer that left it ambiguous; NULL while in flight, or when it never ended (a crash).
CREATE TABLE IF NOT EXISTS store_log (
    asset_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    error TEXT,
    PRIMARY KEY (asset_id, number)
);
-- Handles Filestack made for our assets that no document uses (schema 5).
CREATE TABLE IF NOT EXISTS orphans (
    handle TEXT PRIMARY KEY,
    asset_id TEXT NOT NULL,
    storage_key TEXT,
    url TEXT NOT NULL,
    store_number INTEGER,
    reason TEXT NOT NULL,
    noticed_at REAL NOT NULL
);

-- Every run of every job (schema 6), for the operator page: the jobs table keeps only each
-- document's latest outcome. Capped per document and pruned by age.
CREATE TABLE IF NOT EXISTS job_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('done', 'retry', 'failed', 'expired')),
    message TEXT,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS job_history_document ON job_history (document_id, id);
CREATE INDEX IF NOT EXISTS job_history_ended ON job_history (ended_at);

-- One row rewritten by /readyz (schema 3): proof that the store can still be written.
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL,
    pad BLOB
);
"""


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        document_id=row["document_id"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        run_after=row["run_after"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        operation=row["operation"],
        not_before=row["not_before"],
        source=JobSource(row["source"]),
        read_retries=row["read_retries"],
        last_error=row["last_error"],
        lease_owner=row["lease_owner"],
        delivery_id=row["delivery_id"],
    )


def _backfill(row: sqlite3.Row) -> BackfillRun:
    return BackfillRun(
        name=row["name"],
        cursor=row["cursor"],
        total=row["total"],
        swept=row["swept"],
        queued=row["queued"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


def _connection(path: Path, busy_timeout: float, *, create: bool) -> sqlite3.Connection:
    if create:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    else:  # mode=rw: fails instead of making an empty database at a mistyped path
        uri = f"{path.absolute().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise ConfigError(f"CMS_SYNC_DATABASE: {path} cannot use WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk when it returns
    return conn


def _connect(path: Path, busy_timeout: float, create: bool = True) -> _Opened:
    """Open, create or migrate the schema, and open the ingest connection beside it."""
    if not create and not path.is_file():
        raise ConfigError(
            f"CMS_SYNC_DATABASE: no database at {path} "
            "(only serve and sync create one; is the path right?)"
        )
    conn = _connection(path, busy_timeout, create=create)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"CMS_SYNC_DATABASE: {path} has schema {version}, newer than this cms-sync knows"
        )
    if 0 < version < SCHEMA_VERSION:
        _migrate(conn)
    conn.executescript(_SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    writes = _connection(path, busy_timeout, create=False)
    stat = os.stat(path)
    try:
        lock = WriteLock(lock_path(path))
    except OSError as exc:
        raise ConfigError(f"CMS_SYNC_DATABASE: cannot open {lock_path(path)}: {exc}") from None
    return _Opened(conn, writes, lock, (stat.st_dev, stat.st_ino))


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the jobs table of an older schema up to date (each step checks first).

    Schema 4: a job's ``transaction_time`` is its ``not_before``; jobs have a source.
    Schema 5: jobs keep the idempotency key of their latest delivery.
    """
    conn.execute("BEGIN IMMEDIATE")  # another process may be migrating at the same time
    try:
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "transaction_time" in columns:
            conn.execute("ALTER TABLE jobs RENAME COLUMN transaction_time TO not_before")
        if "source" not in columns:
            conn.execute(
                "ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook' "
                "CHECK (source IN ('webhook', 'replay', 'backfill'))"
            )
        if "delivery_id" not in columns:
            conn.execute("ALTER TABLE jobs ADD COLUMN delivery_id TEXT")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class _Opened:
    conn: sqlite3.Connection  # reads, on the executor's thread
    writes: sqlite3.Connection  # every write but deliveries, group-committed
    lock: WriteLock  # taken by every writer of the database
    identity: tuple[int, int]  # (device, inode) of the file at the configured path


class SQLiteAssetRecords:
    """Stored-asset records in the job store's database (durable across runs)."""

    def __init__(self, store: SQLiteJobStore) -> None:
        self._store = store

    async def get(self, asset_id: str) -> StoredAsset | None:
        return await self._store.run(lambda conn: _record(conn, asset_id))

    async def put(self, record: StoredAsset) -> StoredAsset:
        def write(conn: sqlite3.Connection) -> StoredAsset:
            kept = _record(conn, record.asset_id)
            if kept is None:
                _insert_record(conn, record)
            elif kept.handle != record.handle:
                _insert_orphan(conn, orphan(record, ANSWERED_LATE, now=time.time()))
            # Settled; the row stays (with its total) as the trace of possible copies.
            conn.execute(
                "UPDATE store_attempts SET attempts = 0, not_before = 0 WHERE asset_id = ?",
                (record.asset_id,),
            )
            return kept or record

        return await self._store.transaction(write)

    async def begin_store(
        self,
        asset_id: str,
        *,
        document_id: str,
        storage_key: str | None,
        now: float,
        hold_until: float,
        max_attempts: int,
    ) -> StoreGate:
        def write(conn: sqlite3.Connection) -> StoreGate:
            found = _record(conn, asset_id)
            if found is not None:
                return StoreGate(record=found)
            conn.execute(
                "INSERT INTO store_attempt_documents (asset_id, document_id) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (asset_id, document_id),
            )
            row = conn.execute(
                "SELECT attempts, not_before, storage_key, last_error FROM store_attempts "
                "WHERE asset_id = ?",
                (asset_id,),
            ).fetchone()
            if row is not None and (row["attempts"] >= max_attempts or row["not_before"] > now):
                return StoreGate(
                    attempts=row["attempts"],
                    not_before=row["not_before"],
                    storage_key=row["storage_key"],
                    last_error=row["last_error"],
                )
            attempts, number = conn.execute(
                "INSERT INTO store_attempts (asset_id, attempts, total, not_before, storage_key, "
                "first_at, updated_at) VALUES (:asset, 1, 1, :hold, :key, :now, :now) "
                "ON CONFLICT (asset_id) DO UPDATE SET attempts = attempts + 1, "
                "total = total + 1, not_before = :hold, storage_key = :key, updated_at = :now "
                "RETURNING attempts, total",
                {"asset": asset_id, "hold": hold_until, "key": storage_key, "now": now},
            ).fetchone()
            conn.execute(
                "INSERT INTO store_log (asset_id, number, started_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET started_at = excluded.started_at, error = NULL",
                (asset_id, number, now),
            )
            return StoreGate(
                granted=True, attempts=attempts, storage_key=storage_key, number=number
            )

        return await self._store.transaction(write)

    async def end_store(
        self, asset_id: str, *, maybe_stored: bool, now: float, retry_at: float, error: str
    ) -> None:
        if maybe_stored:
            sql = "not_before = :retry_at, last_error = :error"
            log_sql = "UPDATE store_log SET error = :error"
        else:  # nothing was stored: the attempt does not count
            sql = "attempts = max(attempts - 1, 0), total = max(total - 1, 0), not_before = :now"
            log_sql = "DELETE FROM store_log"
        params = {"retry_at": retry_at, "error": error, "now": now, "asset": asset_id}

        def write(conn: sqlite3.Connection) -> None:
            # The store in flight is the asset's latest: the ledger holds it meanwhile.
            conn.execute(
                f"{log_sql} WHERE asset_id = :asset AND number = ("  # noqa: S608 - ours
                "  SELECT total FROM store_attempts WHERE asset_id = :asset)",
                params,
            )
            conn.execute(
                f"UPDATE store_attempts SET {sql}, updated_at = :now "  # noqa: S608 - ours
                "WHERE asset_id = :asset",
                params,
            )

        await self._store.transaction(write)


class SQLiteJobStore:
    """:class:`~cms_sync.jobs.JobStore` on one SQLite file.

    Under WAL: deliveries are written by the ingest writer's process on a connection of
    its own (:mod:`.ingest_writer`), so an acknowledgement never queues behind the
    worker's reads and writes; those run on two more connections here, the writes
    through a group commit (:mod:`.groupcommit`). Every writer takes the database's
    :class:`~.writelock.WriteLock` around its transactions; SQLite's lock (and
    ``busy_timeout``) keeps out other programs.

    Before any work the store checks that the file it has open is still the file at the
    configured path (device and inode). Once it is not (deleted, its directory removed,
    replaced), the store is *lost*: everything raises :class:`StoreUnavailable`, so
    deliveries get 503 and ``/readyz`` fails, instead of acknowledging what no restart
    would find.
    """

    def __init__(
        self,
        path: Path,
        opened: _Opened,
        executor: ThreadPoolExecutor,
        *,
        ingest_timeout: float,
        write_timeout: float,
    ) -> None:
        self._path = path
        self._conn = opened.conn
        self._identity = opened.identity
        self._executor = executor
        self._write_lock = opened.lock
        self._lost: str | None = None
        self._ingest_timeout = ingest_timeout
        self._write_timeout = write_timeout
        self._ingest = IngestProcess(path, opened.identity, on_lost=self._ingest_lost)
        self._writes = GroupCommit(
            opened.writes, self._write_lock, check=self._check_file, name="cms-sync-writes"
        )
        self._writes.start()
        self._records = SQLiteAssetRecords(self)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout: float = 10.0,
        create: bool = True,
        ingest_timeout: float = 2.0,
    ) -> SQLiteJobStore:
        """Open the database at ``path``, creating it only when ``create`` is set.

        Args:
            busy_timeout: how long the worker's and operators' writes wait for another
                process's write lock.
            ingest_timeout: how long a delivery waits to be written before it fails (503).

        Raises:
            ConfigError: the file is missing (and ``create`` is off), cannot be opened or
                is not a cms-sync database.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cms-sync-sqlite")
        loop = asyncio.get_running_loop()
        try:
            opened = await loop.run_in_executor(executor, _connect, path, busy_timeout, create)
        except sqlite3.Error as exc:
            executor.shutdown(wait=False)
            raise ConfigError(f"CMS_SYNC_DATABASE: cannot open {path}: {exc}") from None
        except ConfigError:
            executor.shutdown(wait=False)
            raise
        return cls(
            path, opened, executor, ingest_timeout=ingest_timeout, write_timeout=busy_timeout
        )

    @property
    def records(self) -> SQLiteAssetRecords:
        return self._records

    def _check_file(self) -> None:
        """Raise StoreUnavailable once the open file is no longer the one at the path."""
        if self._lost is None:
            problem = file_problem(self._path, self._identity)
            if problem is None:
                return
            self._lost = lost_message(self._path, problem)
            log.error("job_store_lost", path=str(self._path), problem=problem)
        raise StoreUnavailable(self._lost)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the store's thread; SQLite errors become :class:`StoreUnavailable`."""

        def checked(conn: sqlite3.Connection) -> T:
            self._check_file()
            return fn(conn)

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, checked, self._conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"job store: {exc}") from exc

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction, committed together with whatever other
        writes are queued by then (one fsync for all; see :mod:`.groupcommit`).

        Raises:
            StoreUnavailable: SQLite failed, or the write could not start in time.
            Whatever ``fn`` raises: its own writes are rolled back, no one else's.
        """
        return await self._writes.submit(fn, budget=self._write_timeout)

    def _ingest_lost(self, message: str) -> None:
        """The ingest writer found the file replaced or gone: so is the store, for all."""
        if self._lost is None:
            self._lost = message
            log.error("job_store_lost", path=str(self._path), problem=message)

    # -- deliveries and queueing ------------------------------------------------------
    async def accept(
        self, idempotency_key: str | None, requests: Sequence[JobRequest], *, now: float
    ) -> Accepted:
        if idempotency_key is None and not requests:
            return Accepted()
        if self._lost is not None:
            raise StoreUnavailable(self._lost)
        jobs = [[r.document_id, r.operation, r.not_before, r.source.value] for r in requests]
        duplicate, queued, coalesced = await self._ingest.request(
            ["accept", idempotency_key, now, jobs], time.monotonic() + self._ingest_timeout
        )
        return Accepted(duplicate=duplicate, queued=tuple(queued), coalesced=tuple(coalesced))

    async def enqueue(self, requests: Sequence[JobRequest], *, now: float) -> Accepted:
        requests = list({r.document_id: r for r in reversed(requests)}.values())[::-1]

        def write(conn: sqlite3.Connection) -> Accepted:
            unseen = tuple(
                e.document_id
                for e in requests
                if conn.execute(
                    "SELECT 1 FROM jobs WHERE document_id = ? LIMIT 1", (e.document_id,)
                ).fetchone()
                is None
            )
            accepted = _queue(conn, requests, now=now, clear_failed=True)
            return dataclasses.replace(accepted, unseen=unseen)

        return await self.transaction(write)

    async def confirm_store(self, notice: StoreNotice, *, now: float) -> Confirmation:
        def write(conn: sqlite3.Connection) -> Confirmation:
            key = notice.delivery_id
            if not conn.execute(
                "INSERT INTO inbox (idempotency_key, received_at) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (key, now),
            ).rowcount:
                return Confirmation(Confirmed.DUPLICATE)
            kept = _record(conn, notice.asset_id)
            if kept is not None and kept.handle == notice.handle:
                return Confirmation(Confirmed.KNOWN)
            if kept is not None:
                logged = conn.execute(
                    "SELECT error FROM store_log WHERE asset_id = ? AND number = ?",
                    (notice.asset_id, notice.store_number),
                ).fetchone()
                reason = notified_reason(logged is not None, logged["error"] if logged else None)
                _insert_orphan(conn, orphan(notice, reason, now=now))
                return Confirmation(Confirmed.ORPHAN, reason=reason)
            ledger = conn.execute(
                "SELECT storage_key FROM store_attempts WHERE asset_id = ?", (notice.asset_id,)
            ).fetchone()
            if ledger is None:
                return Confirmation(Confirmed.UNKNOWN)
            _insert_record(conn, notice_record(notice))
            conn.execute(
                "UPDATE store_attempts SET attempts = 0, not_before = 0 WHERE asset_id = ?",
                (notice.asset_id,),
            )
            waiting = [
                row[0]
                for row in conn.execute(
                    "SELECT document_id FROM store_attempt_documents WHERE asset_id = ? "
                    "ORDER BY document_id",
                    (notice.asset_id,),
                )
            ]
            # Due now: the asset is recorded, so no backoff protects anything any more.
            conn.executemany(
                "UPDATE jobs SET run_after = min(run_after, ?) "
                "WHERE document_id = ? AND state = 'pending'",
                [(now, doc) for doc in waiting],
            )
            _queue(
                conn,
                [JobRequest(doc) for doc in waiting],
                now=now,
                clear_failed=False,
                delivery_id=key,
            )
            return Confirmation(Confirmed.RECORDED, queued=tuple(waiting))

        # a notification is ingest: bounded like a delivery, so Filestack gets a 503 in time
        # A notice is bounded like a delivery: a held lock gets a 503 in time.
        return await self._writes.submit(write, budget=self._ingest_timeout)

    async def orphans(self) -> tuple[list[Orphan], list[UnseenCopies]]:
        def read(conn: sqlite3.Connection) -> tuple[list[Orphan], list[UnseenCopies]]:
            orphans = [
                Orphan(*row)
                for row in conn.execute(
                    "SELECT handle, asset_id, storage_key, url, store_number, reason, "
                    "noticed_at FROM orphans ORDER BY noticed_at, handle"
                )
            ]
            unseen = [
                UnseenCopies(*row)
                for row in conn.execute(
                    "SELECT * FROM (SELECT s.asset_id, s.storage_key, s.total - 1 - ("
                    "  SELECT count(*) FROM orphans AS o WHERE o.asset_id = s.asset_id) "
                    "  AS possible, s.last_error FROM store_attempts AS s) "
                    "WHERE possible > 0 ORDER BY asset_id"
                )
            ]
            return orphans, unseen

        return await self.run(read)

    async def latest_job(self, document_id: str) -> Job | None:
        def read(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "SELECT * FROM jobs WHERE document_id = ? ORDER BY id DESC LIMIT 1",
                (document_id,),
            ).fetchone()
            return None if row is None else _job(row)

        return await self.run(read)

    # -- the worker's side ------------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        max_attempts: int,
        document_id: str | None = None,
    ) -> Job | None:
        def write(conn: sqlite3.Connection) -> Job | None:
            _recover_expired(conn, now=now, max_attempts=max_attempts)
            row = conn.execute(
                "SELECT id FROM jobs AS j WHERE state = 'pending' AND run_after <= :now "
                "AND (:doc IS NULL OR document_id = :doc) "
                "AND NOT EXISTS (SELECT 1 FROM jobs AS r "
                "  WHERE r.document_id = j.document_id AND r.state = 'running') "
                "ORDER BY run_after, id LIMIT 1",
                {"now": now, "doc": document_id},
            ).fetchone()
            if row is None:
                return None
            claimed = conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, "
                "lease_until = ?, updated_at = ? WHERE id = ? RETURNING *",
                (owner, now + lease, now, row["id"]),
            ).fetchone()
            return _job(claimed)

        return await self.transaction(write)

    async def renew(self, job: Job, *, until: float) -> bool:
        return await self._owned_update(job, "lease_until = ?", (until,))

    async def finish(self, job: Job, *, now: float, note: str | None = None) -> bool:
        return await self._conclude(job, JobState.DONE, note, now=now)

    async def retry(
        self, job: Job, *, now: float, run_after: float, error: str, read_retry: bool = False
    ) -> bool:
        return await self._back_to_pending(
            job,
            "run_after = ?, last_error = ?, updated_at = ?, read_retries = read_retries + ?",
            (run_after, error, now, int(read_retry)),
            keep_backoff=run_after,
            ran=(error, now),
        )

    async def release(self, job: Job, *, now: float) -> bool:
        return await self._back_to_pending(
            job, "attempts = max(attempts - 1, 0), run_after = ?, updated_at = ?", (now, now)
        )

    async def fail(self, job: Job, *, now: float, error: str) -> bool:
        return await self._conclude(job, JobState.FAILED, error, now=now)

    async def _conclude(
        self, job: Job, state: JobState, message: str | None, *, now: float
    ) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            if not _update_owned(
                conn,
                job,
                "state = ?, lease_owner = NULL, lease_until = NULL, last_error = ?, updated_at = ?",
                (state.value, message, now),
            ):
                return False
            outcome = RunOutcome.DONE if state is JobState.DONE else RunOutcome.FAILED
            _log_run(conn, job, outcome, message, now=now)
            # Only a document's latest outcome matters: a done job clears old failures.
            conn.execute(
                "DELETE FROM jobs WHERE document_id = ? AND id != ? "
                "AND state IN ('done', 'failed')",
                (job.document_id, job.id),
            )
            return True

        return await self.transaction(write)

    async def _back_to_pending(
        self,
        job: Job,
        assignments: str,
        params: tuple[Any, ...],
        *,
        keep_backoff: float | None = None,
        ran: tuple[str, float] | None = None,
    ) -> bool:
        """Make a running job pending again, or fold it into a newer pending job.

        Args:
            keep_backoff: a retry's ``run_after``: a newer pending job takes over the
                backoff and the attempt count, so new deliveries cannot cut a backoff short.
            ran: a retry's error and time, for the history (a release did not run).
        """

        def write(conn: sqlite3.Connection) -> bool:
            kept = _write(conn)
            if kept and ran is not None:
                _log_run(conn, job, RunOutcome.RETRY, ran[0], now=ran[1])
            return kept

        def _write(conn: sqlite3.Connection) -> bool:
            newer = conn.execute(
                "SELECT id FROM jobs WHERE document_id = ? AND state = 'pending'",
                (job.document_id,),
            ).fetchone()
            if newer is None:
                return _update_owned(
                    conn,
                    job,
                    f"state = 'pending', lease_owner = NULL, lease_until = NULL, {assignments}",
                    params,
                )
            # A delivery arrived meanwhile and its pending job covers this one.
            deleted = conn.execute(
                "DELETE FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (job.id, job.lease_owner),
            ).rowcount
            if deleted and keep_backoff is not None:
                # ...unless a notification made it due: the store it waited for is
                # recorded now, so the backoff protects nothing.
                conn.execute(
                    "UPDATE jobs SET run_after = CASE WHEN delivery_id LIKE ? THEN run_after "
                    "  ELSE max(run_after, ?) END, attempts = max(attempts, ?) WHERE id = ?",
                    (f"{DELIVERY_PREFIX}%", keep_backoff, job.attempts, newer["id"]),
                )
            return bool(deleted)

        return await self.transaction(write)

    async def _owned_update(self, job: Job, assignments: str, params: tuple[Any, ...]) -> bool:
        return await self.transaction(lambda conn: _update_owned(conn, job, assignments, params))

    # -- operators --------------------------------------------------------------------
    async def failures(self) -> list[FailedJob]:
        def read(conn: sqlite3.Connection) -> list[FailedJob]:
            rows = conn.execute(
                "SELECT document_id, attempts, last_error, updated_at, source FROM jobs "
                "WHERE state = 'failed' ORDER BY updated_at DESC, id DESC"
            ).fetchall()
            latest: dict[str, FailedJob] = {}
            for r in rows:
                failed = FailedJob(r[0], r[1], r[2] or "", r[3], JobSource(r[4]))
                latest.setdefault(r[0], failed)
            return list(latest.values())

        return await self.run(read)

    # -- backfill -----------------------------------------------------------------------
    async def begin_backfill(self, name: str, *, total: int | None, now: float) -> BackfillRun:
        def write(conn: sqlite3.Connection) -> BackfillRun:
            row = conn.execute("SELECT * FROM backfills WHERE name = ?", (name,)).fetchone()
            if row is None or row["finished_at"] is not None:
                conn.execute(
                    "INSERT INTO backfills (name, cursor, total, swept, queued, started_at, "
                    "updated_at) VALUES (?, NULL, ?, 0, 0, ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET cursor = NULL, total = excluded.total, swept = 0, queued = 0, "
                    "started_at = excluded.started_at, updated_at = excluded.updated_at, "
                    "finished_at = NULL",
                    (name, total, now, now),
                )
                row = conn.execute("SELECT * FROM backfills WHERE name = ?", (name,)).fetchone()
            return _backfill(row)

        return await self.transaction(write)

    async def advance_backfill(
        self, name: str, requests: Sequence[JobRequest], *, cursor: str, now: float
    ) -> Accepted:
        def write(conn: sqlite3.Connection) -> Accepted:
            accepted = _queue(conn, requests, now=now, clear_failed=False)
            moved = conn.execute(
                "UPDATE backfills SET cursor = ?, swept = swept + ?, queued = queued + ?, "
                "updated_at = ? WHERE name = ? AND finished_at IS NULL",
                (cursor, len(requests), len(accepted.queued), now, name),
            ).rowcount
            if not moved:
                raise ValueError(f"no unfinished backfill called {name!r}")
            return accepted

        return await self.transaction(write)

    async def finish_backfill(self, name: str, *, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE backfills SET finished_at = ?, updated_at = ? "
                "WHERE name = ? AND finished_at IS NULL",
                (now, now, name),
            )

        await self.transaction(write)

    async def backfill(self, name: str) -> BackfillRun | None:
        def read(conn: sqlite3.Connection) -> BackfillRun | None:
            row = conn.execute("SELECT * FROM backfills WHERE name = ?", (name,)).fetchone()
            return None if row is None else _backfill(row)

        return await self.run(read)

    async def source_counts(self, source: JobSource, *, since: float) -> dict[JobState, int]:
        def read(conn: sqlite3.Connection) -> dict[JobState, int]:
            counts = {state: 0 for state in JobState}
            for state, n in conn.execute(
                "SELECT state, count(*) FROM jobs WHERE source = ? AND created_at >= ? "
                "GROUP BY state",
                (source.value, since),
            ):
                counts[JobState(state)] = n
            return counts

        return await self.run(read)

    async def stats(self, *, now: float) -> StoreStats:
        def read(conn: sqlite3.Connection) -> StoreStats:
            counts = {state: 0 for state in JobState}
            by_source: dict[tuple[JobState, JobSource], int] = {}
            for state, source, count in conn.execute(
                "SELECT state, source, count(*) FROM jobs GROUP BY state, source"
            ):
                counts[JobState(state)] += count
                by_source[JobState(state), JobSource(source)] = count
            oldest = conn.execute(
                "SELECT min(created_at) FROM jobs WHERE state = 'pending'"
            ).fetchone()[0]
            assets = conn.execute("SELECT count(*) FROM assets").fetchone()[0]
            unanswered = conn.execute(
                "SELECT count(*) FROM store_attempts WHERE attempts > 0 "
                "AND asset_id NOT IN (SELECT asset_id FROM assets)"
            ).fetchone()[0]
            running = conn.execute(
                "SELECT document_id, lease_owner, attempts, updated_at, lease_until FROM jobs "
                "WHERE state = 'running' ORDER BY updated_at, id"
            ).fetchall()
            return StoreStats(
                counts=counts,
                oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
                stored_assets=assets,
                unanswered_stores=unanswered,
                running=tuple(RunningJob(*row) for row in running),
                by_source=by_source,
            )

        return await self.run(read)

    async def next_due(self) -> float | None:
        def read(conn: sqlite3.Connection) -> float | None:
            due = conn.execute(
                "SELECT min(run_after) FROM jobs WHERE state = 'pending'"
            ).fetchone()[0]
            lease = conn.execute(
                "SELECT min(lease_until) FROM jobs WHERE state = 'running'"
            ).fetchone()[0]
            times = [t for t in (due, lease) if t is not None]
            return min(times) if times else None

        return await self.run(read)

    async def check_writable(self, *, budget: float) -> None:
        # Written the way deliveries are (by the ingest writer), and larger than a
        # delivery's write: on a nearly full disk a probe that fits where a delivery does
        # not would say "ready" falsely.
        if self._lost is not None:
            raise StoreUnavailable(self._lost)
        await self._ingest.request(["probe", time.time(), _PROBE_BYTES], time.monotonic() + budget)

    async def prune(self, *, before: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM inbox WHERE received_at < ?", (before,))
            conn.execute("DELETE FROM job_history WHERE ended_at < ?", (before,))

        await self.transaction(write)

    # -- the operator page --------------------------------------------------------------
    async def history(self, document_id: str, *, limit: int = HISTORY_PER_DOCUMENT) -> list[JobRun]:
        def read(conn: sqlite3.Connection) -> list[JobRun]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM job_history "  # noqa: S608 - our column list
                "WHERE document_id = ? ORDER BY id DESC LIMIT ?",
                (document_id, limit),
            ).fetchall()
            return [_run(row) for row in rows]

        return await self.run(read)

    async def run_counts(
        self, *, since: float, bucket: float, source: JobSource | None = None
    ) -> dict[tuple[int, RunOutcome], int]:
        def read(conn: sqlite3.Connection) -> dict[tuple[int, RunOutcome], int]:
            rows = conn.execute(
                "SELECT CAST((ended_at - :since) / :bucket AS INTEGER) AS slot, outcome, "
                "count(*) FROM job_history WHERE ended_at >= :since "
                "AND (:source IS NULL OR source = :source) GROUP BY slot, outcome",
                {"since": since, "bucket": bucket, "source": source and source.value},
            ).fetchall()
            return {(slot, RunOutcome(outcome)): n for slot, outcome, n in rows}

        return await self.run(read)

    async def recent_documents(self, *, limit: int) -> list[Job]:
        def read(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE id IN (SELECT max(id) FROM jobs GROUP BY document_id) "
                "ORDER BY updated_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_job(row) for row in rows]

        return await self.run(read)

    async def backfills(self) -> list[BackfillRun]:
        def read(conn: sqlite3.Connection) -> list[BackfillRun]:
            rows = conn.execute("SELECT * FROM backfills ORDER BY updated_at DESC, name")
            return [_backfill(row) for row in rows.fetchall()]

        return await self.run(read)

    def add_waker(self, wake: Callable[[], None]) -> None:
        """SQLite cannot tell: another process's jobs are found by polling."""

    async def close(self) -> None:
        await self._ingest.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._writes.close)
        await loop.run_in_executor(self._executor, self._conn.close)
        await loop.run_in_executor(self._executor, self._write_lock.close)
        self._executor.shutdown(wait=True)


def _update_owned(
    conn: sqlite3.Connection, job: Job, assignments: str, params: tuple[Any, ...]
) -> bool:
    """Update a running job only while ``job.lease_owner`` still holds it."""
    return bool(
        conn.execute(
            f"UPDATE jobs SET {assignments} "  # noqa: S608 - assignments are ours, values bound
            "WHERE id = ? AND state = 'running' AND lease_owner = ?",
            (*params, job.id, job.lease_owner),
        ).rowcount
    )


def _queue(
    conn: sqlite3.Connection,
    requests: Sequence[JobRequest],
    *,
    now: float,
    clear_failed: bool,
    delivery_id: str | None = None,
) -> Accepted:
    """Queue each request (as the ingest writer queues a delivery's); a replay
    (``clear_failed``) also forgets the document's failure and resets the cap on the
    unanswered stores of its assets."""
    if clear_failed:
        for event in requests:
            conn.execute(
                "DELETE FROM jobs WHERE document_id = ? AND state = 'failed'", (event.document_id,)
            )
            conn.execute(
                "UPDATE store_attempts SET attempts = 0 WHERE asset_id IN ("
                "  SELECT asset_id FROM store_attempt_documents WHERE document_id = ?)",
                (event.document_id,),
            )
    queued, coalesced = ingest_writer.queue(
        conn,
        [(r.document_id, r.operation, r.not_before, r.source.value) for r in requests],
        now=now,
        reset=clear_failed,
        delivery_id=delivery_id,
    )
    return Accepted(queued=tuple(queued), coalesced=tuple(coalesced))


def _record(conn: sqlite3.Connection, asset_id: str) -> StoredAsset | None:
    row = conn.execute(
        "SELECT asset_id, handle, url, size, mime_type FROM assets WHERE asset_id = ?",
        (asset_id,),
    ).fetchone()
    return None if row is None else StoredAsset(*row)


def _insert_record(conn: sqlite3.Connection, record: StoredAsset) -> None:
    conn.execute(
        "INSERT INTO assets (asset_id, handle, url, size, mime_type, stored_at) "
        "VALUES (?, ?, ?, ?, ?, strftime('%s', 'now'))",
        (record.asset_id, record.handle, record.url, record.size, record.mime_type),
    )


def _insert_orphan(conn: sqlite3.Connection, row: tuple[object, ...]) -> None:
    conn.execute(
        f"INSERT INTO orphans ({', '.join(ORPHAN_COLUMNS)}) "  # noqa: S608 - constant names
        f"VALUES ({', '.join('?' * len(row))}) ON CONFLICT DO NOTHING",
        row,
    )


_RUN_COLUMNS = ", ".join(RUN_COLUMNS)
_RUN_PLACES = ", ".join("?" for _ in RUN_COLUMNS)


def _run(row: sqlite3.Row) -> JobRun:
    return JobRun(
        document_id=row["document_id"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        source=JobSource(row["source"]),
        outcome=RunOutcome(row["outcome"]),
        message=row["message"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        worker=row["worker"],
    )


def _log_run(
    conn: sqlite3.Connection, job: Job, outcome: RunOutcome, message: str | None, *, now: float
) -> None:
    """Keep one run in the document's history (claim time is the job's ``updated_at``)."""
    conn.execute(
        f"INSERT INTO job_history ({_RUN_COLUMNS}) "  # noqa: S608 - our column list
        f"VALUES ({_RUN_PLACES})",
        run_row(job, outcome, message, now=now),
    )
    _cap_history(conn, job.document_id)


def _cap_history(conn: sqlite3.Connection, document_id: str) -> None:
    conn.execute(
        "DELETE FROM job_history WHERE document_id = :doc AND id <= (SELECT id FROM job_history "
        "  WHERE document_id = :doc ORDER BY id DESC LIMIT 1 OFFSET :keep)",
        {"doc": document_id, "keep": HISTORY_PER_DOCUMENT},
    )


def _recover_expired(conn: sqlite3.Connection, *, now: float, max_attempts: int) -> None:
    """Running jobs whose lease ran out (their worker died) become runnable again."""
    expired = conn.execute(
        f"INSERT INTO job_history ({_RUN_COLUMNS}) "  # noqa: S608 - our column list
        "SELECT document_id, id, attempts, source, 'expired', "
        "'lease expired: the worker stopped or crashed', updated_at, ?, lease_owner "
        "FROM jobs WHERE state = 'running' AND lease_until < ? RETURNING document_id",
        (now, now),
    ).fetchall()
    for (document_id,) in expired:
        _cap_history(conn, document_id)
    conn.execute(
        "DELETE FROM jobs WHERE state = 'running' AND lease_until < ? AND EXISTS ("
        "  SELECT 1 FROM jobs AS p WHERE p.document_id = jobs.document_id AND p.state = 'pending')",
        (now,),
    )
    conn.execute(
        "UPDATE jobs SET "
        "state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'pending' END, "
        "last_error = CASE WHEN attempts >= ? "
        "  THEN 'gave up after ' || attempts || ' attempts; the last one never finished "
        "(worker stopped or crashed)' "
        "  ELSE 'lease expired: the worker stopped or crashed' END, "
        "lease_owner = NULL, lease_until = NULL, run_after = ?, updated_at = ? "
        "WHERE state = 'running' AND lease_until < ?",
        (max_attempts, max_attempts, now, now, now),
    )
