"""The shared job store: PostgreSQL, for several replicas (psycopg 3, async, pooled).

Every replica runs the same statements against the same tables, and the schema carries
the invariants, as in SQLite: a partial unique index allows one pending and one running
job per document, and the inbox's primary key dedupes deliveries. What SQLite gets from
its single writer, PostgreSQL gets from row locks:

- a claim takes the next due job ``FOR UPDATE SKIP LOCKED``, so replicas claiming at once
  take different jobs without waiting on each other;
- a delivery is one statement (inbox row, then an upsert on the pending-job index), so
  two replicas accepting the same document at once coalesce instead of colliding;
- a store is granted by one conditional upsert of the asset's ledger row: a replica
  racing for the same asset waits on that row and then finds it held, so an asset is
  stored once across replicas; its record, and the ambiguous-store count and backoff,
  live in the same shared tables;
- a lease that runs out (its replica died) is recovered by whichever replica claims next.

Idle workers on every replica are woken by ``NOTIFY cms_sync_jobs`` when a job is queued
or handed back; polling stays as the fallback, so a lost notification costs at most a
poll interval.

The schema is created or migrated at start under an advisory lock, and its version is
kept in ``cms_sync_schema``; a replica whose code is older than the schema refuses to
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
Conn = psycopg.AsyncConnection[dict[str, Any]]

SCHEMA_VERSION = 3
CHANNEL = "cms_sync_jobs"  # _MANY_TAIL spells it too
#: Any constant: the advisory lock that serialises schema changes across replicas.
_SCHEMA_LOCK = 0x636D_7373_796E_63  # "cmssync"
#: Errors that mean the database is unreachable or went away, not a bug in a statement.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    idempotency_key text PRIMARY KEY,
    received_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_received ON inbox (received_at);

CREATE TABLE IF NOT EXISTS jobs (
    id bigserial PRIMARY KEY,
    document_id text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    run_after double precision NOT NULL,
    lease_owner text,
    lease_until double precision,
    operation text,
    not_before double precision,
    source text NOT NULL DEFAULT 'webhook' CHECK (source IN ('webhook', 'replay', 'backfill')),
    read_retries integer NOT NULL DEFAULT 0,
    last_error text,
    delivery_id text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_pending ON jobs (document_id) WHERE state = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_running ON jobs (document_id) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (run_after, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_document ON jobs (document_id, state);

CREATE TABLE IF NOT EXISTS assets (
    asset_id text PRIMARY KEY,
    handle text NOT NULL,
    url text NOT NULL,
    size bigint,
    mime_type text,
    stored_at double precision NOT NULL
);

-- The ledger of stores whose answer never came: see cms_sync.records. A settled asset
-- (one with a record) is held forever (not_before = infinity), so a replica that looked
-- for the record a moment before it was written is refused, then finds the record.
CREATE TABLE IF NOT EXISTS store_attempts (
    asset_id text PRIMARY KEY,
    attempts integer NOT NULL,
    total integer NOT NULL,
    not_before double precision NOT NULL,
    storage_key text,
    last_error text,
    first_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS store_attempt_documents (
    asset_id text NOT NULL,
    document_id text NOT NULL,
    PRIMARY KEY (asset_id, document_id)
);
CREATE INDEX IF NOT EXISTS store_attempt_documents_doc ON store_attempt_documents (document_id);

-- Sweeps of existing documents (cms-sync backfill): where each one has got to.
CREATE TABLE IF NOT EXISTS backfills (
    name text PRIMARY KEY,
    cursor text,
    total bigint,
    swept bigint NOT NULL DEFAULT 0,
    queued bigint NOT NULL DEFAULT 0,
    started_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    finished_at double precision
);
-- Each granted store, so that a notified handle can be explained: error is the answer
-- that left it ambiguous; NULL while in flight, or when it never ended (a crash).
CREATE TABLE IF NOT EXISTS store_log (
    asset_id text NOT NULL,
    number integer NOT NULL,
    started_at double precision NOT NULL,
    error text,
    PRIMARY KEY (asset_id, number)
);
-- Handles Filestack made for our assets that no document uses.
CREATE TABLE IF NOT EXISTS orphans (
    handle text PRIMARY KEY,
    asset_id text NOT NULL,
    storage_key text,
    url text NOT NULL,
    store_number integer,
    reason text NOT NULL,
    noticed_at double precision NOT NULL
);
-- Every run of every job (schema 3), for the operator page: the jobs table keeps only each
-- document's latest outcome. Capped per document and pruned by age.
CREATE TABLE IF NOT EXISTS job_history (
    id bigserial PRIMARY KEY,
    document_id text NOT NULL,
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    source text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('done', 'retry', 'failed', 'expired')),
    message text,
    started_at double precision NOT NULL,
    ended_at double precision NOT NULL,
    worker text
);
CREATE INDEX IF NOT EXISTS job_history_document ON job_history (document_id, id);
CREATE INDEX IF NOT EXISTS job_history_ended ON job_history (ended_at);
CREATE TABLE IF NOT EXISTS probe (
    id integer PRIMARY KEY CHECK (id = 1),
    at double precision NOT NULL,
    pad bytea
);
"""

#: The statements that bring a database of the version before up to each version (a new
#: database gets the whole schema at once).
_MIGRATIONS: dict[int, str] = {
    # Jobs keep the idempotency key of their latest delivery (store_log and orphans are
    # new tables: the schema makes them).
    2: "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS delivery_id text",
}

_PROBE_BYTES = 32 * 1024


def shown(url: str) -> str:
    """The URL with its password left out, for messages and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparseable URL)"
    host = params.get("host", "localhost")
    port = f":{params['port']}" if "port" in params else ""
    user = f"{params['user']}@" if "user" in params else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname', '')}"


def _job(row: dict[str, Any]) -> Job:
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


async def _ensure_schema(conn: Conn, url: str, *, create: bool) -> None:
    """Create or migrate the schema, once, whichever replica gets the lock first."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS cms_sync_schema ("
            " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
        )
        row = await _one(conn, "SELECT version FROM cms_sync_schema")
        version = 0 if row is None else row["version"]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"CMS_SYNC_DATABASE: {shown(url)} has schema {version}, newer than this "
                f"cms-sync knows ({SCHEMA_VERSION}); upgrade this replica"
            )
        if version == 0 and not create:
            raise ConfigError(
                f"CMS_SYNC_DATABASE: no cms-sync tables in {shown(url)} "
                "(only serve and sync create them; is the URL right?)"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            if version > 0 and step in _MIGRATIONS:
                await conn.execute(_MIGRATIONS[step])
        await conn.execute(_SCHEMA)
        await conn.execute(
            "INSERT INTO cms_sync_schema (id, version) VALUES (1, %s) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            (SCHEMA_VERSION,),
        )


class PostgresAssetRecords:
    """Stored-asset records and the unanswered-store ledger, shared by every replica."""

    def __init__(self, store: PostgresJobStore) -> None:
        self._store = store

    async def get(self, asset_id: str) -> StoredAsset | None:
        async def read(conn: Conn) -> StoredAsset | None:
            return await _record(conn, asset_id)

        return await self._store.run(read)

    async def put(self, record: StoredAsset) -> StoredAsset:
        async def write(conn: Conn) -> StoredAsset:
            kept = await _keep_record(conn, record)
            if kept.handle != record.handle:
                await _insert_orphan(conn, orphan(record, ANSWERED_LATE, now=time.time()))
            return kept

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
        async def write(conn: Conn) -> StoreGate:
            record = await _record(conn, asset_id)
            if record is not None:
                return StoreGate(record=record)
            await conn.execute(
                "INSERT INTO store_attempt_documents (asset_id, document_id) "
                "VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (asset_id, document_id),
            )
            # One statement decides: a replica racing for the same asset waits on the
            # row, then sees it held (ON CONFLICT re-checks the newest row version).
            granted = await _one(
                conn,
                "INSERT INTO store_attempts (asset_id, attempts, total, not_before, "
                "storage_key, first_at, updated_at) "
                "VALUES (%(asset)s, 1, 1, %(hold)s, %(key)s, %(now)s, %(now)s) "
                "ON CONFLICT (asset_id) DO UPDATE SET "
                "attempts = store_attempts.attempts + 1, total = store_attempts.total + 1, "
                "not_before = excluded.not_before, storage_key = excluded.storage_key, "
                "updated_at = excluded.updated_at "
                "WHERE store_attempts.attempts < %(max)s "
                "AND store_attempts.not_before <= %(now)s "
                "RETURNING attempts, total",
                {
                    "asset": asset_id,
                    "hold": hold_until,
                    "key": storage_key,
                    "now": now,
                    "max": max_attempts,
                },
            )
            if granted is not None:
                await conn.execute(
                    "INSERT INTO store_log (asset_id, number, started_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (asset_id, number) DO UPDATE SET "
                    "started_at = excluded.started_at, error = NULL",
                    (asset_id, granted["total"], now),
                )
                return StoreGate(
                    granted=True,
                    attempts=granted["attempts"],
                    storage_key=storage_key,
                    number=granted["total"],
                )
            record = await _record(conn, asset_id)  # stored meanwhile by another replica?
            if record is not None:
                return StoreGate(record=record)
            row = await _one(
                conn,
                "SELECT attempts, not_before, storage_key, last_error FROM store_attempts "
                "WHERE asset_id = %s",
                (asset_id,),
            )
            assert row is not None  # the upsert found it
            return StoreGate(
                attempts=row["attempts"],
                not_before=row["not_before"],
                storage_key=row["storage_key"],
                last_error=row["last_error"],
            )

        return await self._store.transaction(write)

    async def end_store(
        self, asset_id: str, *, maybe_stored: bool, now: float, retry_at: float, error: str
    ) -> None:
        if maybe_stored:
            sql = "not_before = %(retry_at)s, last_error = %(error)s"
            log_sql = "UPDATE store_log SET error = %(error)s"
        else:  # nothing was stored: the attempt does not count
            sql = (
                "attempts = greatest(attempts - 1, 0), total = greatest(total - 1, 0), "
                "not_before = %(now)s"
            )
            log_sql = "DELETE FROM store_log"
        params = {"retry_at": retry_at, "error": error, "now": now, "asset": asset_id}

        async def write(conn: Conn) -> None:
            # The store in flight is the asset's latest: the ledger holds it meanwhile.
            await conn.execute(
                f"{log_sql} WHERE asset_id = %(asset)s AND number = ("  # noqa: S608 - ours
                "  SELECT total FROM store_attempts WHERE asset_id = %(asset)s)",
                params,
            )
            await conn.execute(
                f"UPDATE store_attempts SET {sql}, updated_at = %(now)s "  # noqa: S608 - ours
                "WHERE asset_id = %(asset)s AND not_before <> 'Infinity'",
                params,
            )

        await self._store.transaction(write)


async def _one(conn: Conn, sql: str, params: Any = None) -> dict[str, Any] | None:
    return await (await conn.execute(sql, params)).fetchone()


async def _all(conn: Conn, sql: str, params: Any = None) -> list[dict[str, Any]]:
    return await (await conn.execute(sql, params)).fetchall()


async def _record(conn: Conn, asset_id: str) -> StoredAsset | None:
    row = await _one(
        conn,
        "SELECT asset_id, handle, url, size, mime_type FROM assets WHERE asset_id = %s",
        (asset_id,),
    )
    return None if row is None else StoredAsset(**row)


async def _keep_record(conn: Conn, record: StoredAsset) -> StoredAsset:
    """Record ``record`` unless the asset has a record already; settle its ledger entry;
    return the record kept."""
    now = time.time()
    await conn.execute(
        "INSERT INTO assets (asset_id, handle, url, size, mime_type, stored_at) "
        "VALUES (%(asset)s, %(handle)s, %(url)s, %(size)s, %(mime)s, %(now)s) "
        "ON CONFLICT (asset_id) DO NOTHING",
        {
            "asset": record.asset_id,
            "handle": record.handle,
            "url": record.url,
            "size": record.size,
            "mime": record.mime_type,
            "now": now,
        },
    )
    # Settled: held for good, so no replica is granted another store of it.
    await conn.execute(
        "INSERT INTO store_attempts (asset_id, attempts, total, not_before, "
        "first_at, updated_at) VALUES (%(asset)s, 0, 0, 'Infinity', %(now)s, %(now)s) "
        "ON CONFLICT (asset_id) DO UPDATE SET attempts = 0, not_before = 'Infinity'",
        {"asset": record.asset_id, "now": now},
    )
    kept = await _record(conn, record.asset_id)
    assert kept is not None
    return kept


async def _insert_orphan(conn: Conn, row: tuple[object, ...]) -> None:
    await conn.execute(
        f"INSERT INTO orphans ({', '.join(ORPHAN_COLUMNS)}) "  # noqa: S608 - constant names
        f"VALUES ({', '.join(['%s'] * len(row))}) ON CONFLICT DO NOTHING",
        row,
    )


class PostgresJobStore:
    """:class:`~cms_sync.jobs.JobStore` on a PostgreSQL database shared by replicas."""

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[Conn],
        *,
        conninfo: str,
        ingest_timeout: float,
    ) -> None:
        self._url = url
        self._pool = pool
        self._ingest_timeout = ingest_timeout
        self._records = PostgresAssetRecords(self)
        self._wakers: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._conninfo = conninfo  # for the listener's own connection
        self._ingest = _Batcher(self._accept_batch)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        create: bool = True,
        ingest_timeout: float = 2.0,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
    ) -> PostgresJobStore:
        """Connect, and create or migrate the schema (only when ``create`` is set).

        Raises:
            ConfigError: the server cannot be reached, refuses the login, the database
                has no cms-sync tables (and ``create`` is off), or its schema is newer
                than this code.
        """
        conninfo = make_conninfo(url)
        if "connect_timeout" not in conninfo_to_dict(conninfo):
            conninfo = make_conninfo(conninfo, connect_timeout=max(1, round(connect_timeout)))
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, row_factory=dict_row
            ) as conn:
                await _ensure_schema(conn, url, create=create)
        except psycopg.Error as exc:
            raise ConfigError(
                f"CMS_SYNC_DATABASE: cannot open {shown(url)}: {_first_line(exc)}"
            ) from None
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            conninfo,
            min_size=min(2, pool_size),
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            timeout=connect_timeout,
            open=False,
            name="cms-sync",
        )
        await pool.open(wait=True, timeout=connect_timeout)
        return cls(url, pool, conninfo=conninfo, ingest_timeout=ingest_timeout)

    @property
    def records(self) -> PostgresAssetRecords:
        return self._records

    # -- plumbing -----------------------------------------------------------------------
    async def run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; an unreachable database is StoreUnavailable."""
        try:
            async with self._pool.connection() as conn:
                return await fn(conn)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"job store: {_first_line(exc)}") from exc

    async def transaction(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        async def wrapped(conn: Conn) -> T:
            async with conn.transaction():
                return await fn(conn)

        return await self.run(wrapped)

    async def _within(self, budget: float, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(budget):
                return await call
        except TimeoutError:
            raise StoreUnavailable("job store: the write did not finish in time") from None

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any replica queues or hands back a job. The first waker
        starts the listener (operator commands never add one, nor hold its connection)."""
        self._wakers.append(wake)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="cms-sync-listen")

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnect (with backoff) when it drops."""
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    self._wake()  # anything queued while we were not listening
                    async for _ in conn.notifies():
                        self._wake()
            except _UNAVAILABLE as exc:
                log.warning("listen_lost", error=_first_line(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _wake(self) -> None:
        for wake in self._wakers:
            wake()

    # -- deliveries and queueing --------------------------------------------------------
    async def accept(
        self, idempotency_key: str | None, requests: Sequence[JobRequest], *, now: float
    ) -> Accepted:
        merged = _merge(requests)
        if not merged and idempotency_key is None:
            return Accepted()
        delivery = _Delivery(idempotency_key, merged, now)
        return await self._within(self._ingest_timeout, self._ingest.submit(delivery))

    async def _accept_batch(self, batch: list[_Delivery]) -> list[Accepted]:
        """Write deliveries that arrived together, in one statement (the client's work
        per statement is what limits ingest)."""
        if len(batch) == 1:
            return [await self.run(lambda conn: _accept_one(conn, batch[0]))]
        return await self.run(lambda conn: _accept_many(conn, batch))

    async def enqueue(self, requests: Sequence[JobRequest], *, now: float) -> Accepted:
        merged = _merge(requests)
        ids = [r.document_id for r in merged]

        async def write(conn: Conn) -> Accepted:
            seen = await _all(
                conn, "SELECT DISTINCT document_id FROM jobs WHERE document_id = ANY(%s)", (ids,)
            )
            known = {row["document_id"] for row in seen}
            await conn.execute(
                "DELETE FROM jobs WHERE document_id = ANY(%s) AND state = 'failed'", (ids,)
            )
            # Replay resets the cap on unanswered stores of the documents' assets.
            await conn.execute(
                "UPDATE store_attempts SET attempts = 0 WHERE asset_id IN ("
                "  SELECT asset_id FROM store_attempt_documents WHERE document_id = ANY(%s))",
                (ids,),
            )
            rows = await _all(conn, _ENQUEUE, {"now": now, **_arrays(merged, None)})
            await conn.execute(f"NOTIFY {CHANNEL}")
            new = {row["document_id"]: row["new"] for row in rows}
            return Accepted(
                queued=tuple(i for i in ids if new[i]),
                coalesced=tuple(i for i in ids if not new[i]),
                unseen=tuple(i for i in ids if i not in known),
            )

        return await self.transaction(write)

    async def confirm_store(self, notice: StoreNotice, *, now: float) -> Confirmation:
        key = notice.delivery_id

        async def write(conn: Conn) -> Confirmation:
            if await _one(conn, _ACCEPT_KEY_ONLY, {"key": key, "now": now}) is None:
                return Confirmation(Confirmed.DUPLICATE)
            # The asset's ledger row, locked: a replica's put or begin_store waits for us.
            ledger = await _one(
                conn,
                "SELECT storage_key FROM store_attempts WHERE asset_id = %s FOR UPDATE",
                (notice.asset_id,),
            )
            kept = await _record(conn, notice.asset_id)
            if kept is not None and kept.handle == notice.handle:
                return Confirmation(Confirmed.KNOWN)
            if kept is not None:
                logged = await _one(
                    conn,
                    "SELECT error FROM store_log WHERE asset_id = %s AND number = %s",
                    (notice.asset_id, notice.store_number),
                )
                reason = notified_reason(logged is not None, logged["error"] if logged else None)
                await _insert_orphan(conn, orphan(notice, reason, now=now))
                return Confirmation(Confirmed.ORPHAN, reason=reason)
            if ledger is None:
                return Confirmation(Confirmed.UNKNOWN)
            await _keep_record(conn, notice_record(notice))
            rows = await _all(
                conn,
                "SELECT document_id FROM store_attempt_documents WHERE asset_id = %s "
                "ORDER BY document_id",
                (notice.asset_id,),
            )
            waiting = [row["document_id"] for row in rows]
            # Due now: the asset is recorded, so no backoff protects anything any more.
            await conn.execute(
                "UPDATE jobs SET run_after = least(run_after, %s) "
                "WHERE document_id = ANY(%s) AND state = 'pending'",
                (now, waiting),
            )
            requests = [JobRequest(doc) for doc in waiting]
            await conn.execute(_ACCEPT_UNKEYED, {"now": now, **_arrays(requests, key)})
            await conn.execute(f"NOTIFY {CHANNEL}")
            return Confirmation(Confirmed.RECORDED, queued=tuple(waiting))

        # a notification is ingest: bounded like a delivery, so Filestack gets a 503 in time
        return await self._within(self._ingest_timeout, self.transaction(write))

    async def orphans(self) -> tuple[list[Orphan], list[UnseenCopies]]:
        async def read(conn: Conn) -> tuple[list[Orphan], list[UnseenCopies]]:
            orphans = await _all(
                conn,
                "SELECT handle, asset_id, storage_key, url, store_number, reason, noticed_at "
                "FROM orphans ORDER BY noticed_at, handle",
            )
            unseen = await _all(
                conn,
                "SELECT * FROM (SELECT s.asset_id, s.storage_key, s.total - 1 - ("
                "  SELECT count(*) FROM orphans AS o WHERE o.asset_id = s.asset_id) "
                "  AS possible, s.last_error FROM store_attempts AS s) AS c "
                "WHERE possible > 0 ORDER BY asset_id",
            )
            return [Orphan(**row) for row in orphans], [UnseenCopies(**row) for row in unseen]

        return await self.run(read)

    async def latest_job(self, document_id: str) -> Job | None:
        async def read(conn: Conn) -> Job | None:
            row = await _one(
                conn,
                "SELECT * FROM jobs WHERE document_id = %s ORDER BY id DESC LIMIT 1",
                (document_id,),
            )
            return None if row is None else _job(row)

        return await self.run(read)

    # -- the worker's side --------------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        max_attempts: int,
        document_id: str | None = None,
    ) -> Job | None:
        async def write(conn: Conn) -> Job | None:
            await _recover_expired(conn, now=now, max_attempts=max_attempts)
            try:
                async with conn.transaction():
                    row = await _one(
                        conn,
                        _CLAIM,
                        {
                            "now": now,
                            "doc": document_id,
                            "owner": owner,
                            "until": now + lease,
                        },
                    )
            except psycopg.errors.UniqueViolation:
                return None  # the document's job was claimed elsewhere meanwhile
            return None if row is None else _job(row)

        return await self.run(write)

    async def renew(self, job: Job, *, until: float) -> bool:
        return await self.transaction(
            lambda conn: _update_owned(conn, job, "lease_until = %s", (until,))
        )

    async def finish(self, job: Job, *, now: float, note: str | None = None) -> bool:
        return await self._conclude(job, JobState.DONE, note, now=now)

    async def fail(self, job: Job, *, now: float, error: str) -> bool:
        return await self._conclude(job, JobState.FAILED, error, now=now)

    async def retry(
        self, job: Job, *, now: float, run_after: float, error: str, read_retry: bool = False
    ) -> bool:
        return await self._back_to_pending(
            job,
            "run_after = %s, last_error = %s, updated_at = %s, read_retries = read_retries + %s",
            (run_after, error, now, int(read_retry)),
            keep_backoff=run_after,
            ran=(error, now),
        )

    async def release(self, job: Job, *, now: float) -> bool:
        return await self._back_to_pending(
            job, "attempts = greatest(attempts - 1, 0), run_after = %s, updated_at = %s", (now, now)
        )

    async def _conclude(
        self, job: Job, state: JobState, message: str | None, *, now: float
    ) -> bool:
        async def write(conn: Conn) -> bool:
            if not await _update_owned(
                conn,
                job,
                "state = %s, lease_owner = NULL, lease_until = NULL, last_error = %s, "
                "updated_at = %s",
                (state.value, message, now),
            ):
                return False
            outcome = RunOutcome.DONE if state is JobState.DONE else RunOutcome.FAILED
            await _log_run(conn, job, outcome, message, now=now)
            # Only a document's latest outcome matters: a done job clears old failures.
            await conn.execute(
                "DELETE FROM jobs WHERE document_id = %s AND id <> %s "
                "AND state IN ('done', 'failed')",
                (job.document_id, job.id),
            )
            await conn.execute(f"NOTIFY {CHANNEL}")  # a pending job may wait on this one
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
        """Make a running job pending again, or fold it into a newer pending job; ``ran``
        is a retry's error and time, for the history (a release did not run)."""

        async def write(conn: Conn) -> bool:
            kept = await _write(conn)
            if kept and ran is not None:
                await _log_run(conn, job, RunOutcome.RETRY, ran[0], now=ran[1])
            return kept

        async def _write(conn: Conn) -> bool:
            # Lock the document's pending job, if any, so a delivery cannot add one between
            # the look and the update (the unique index would refuse the update).
            newer = await _one(
                conn,
                "SELECT id FROM jobs WHERE document_id = %s AND state = 'pending' FOR UPDATE",
                (job.document_id,),
            )
            if newer is None:
                try:
                    async with conn.transaction():
                        kept = await _update_owned(
                            conn,
                            job,
                            "state = 'pending', lease_owner = NULL, lease_until = NULL, "
                            + assignments,
                            params,
                        )
                except psycopg.errors.UniqueViolation:
                    pass  # a delivery's pending job appeared meanwhile: fold into it
                else:
                    if kept:
                        await conn.execute(f"NOTIFY {CHANNEL}")
                    return kept
                newer = await _one(
                    conn,
                    "SELECT id FROM jobs WHERE document_id = %s AND state = 'pending' FOR UPDATE",
                    (job.document_id,),
                )
                assert newer is not None
            deleted = (
                await conn.execute(
                    "DELETE FROM jobs WHERE id = %s AND state = 'running' AND lease_owner = %s",
                    (job.id, job.lease_owner),
                )
            ).rowcount
            if deleted and keep_backoff is not None:
                # ...unless a notification made it due: the store it waited for is
                # recorded now, so the backoff protects nothing.
                await conn.execute(
                    "UPDATE jobs SET run_after = CASE WHEN delivery_id LIKE %s THEN run_after "
                    "  ELSE greatest(run_after, %s) END, "
                    "attempts = greatest(attempts, %s) WHERE id = %s",
                    (f"{DELIVERY_PREFIX}%", keep_backoff, job.attempts, newer["id"]),
                )
            if deleted:
                await conn.execute(f"NOTIFY {CHANNEL}")
            return bool(deleted)

        return await self.transaction(write)

    # -- operators ----------------------------------------------------------------------
    async def failures(self) -> list[FailedJob]:
        async def read(conn: Conn) -> list[FailedJob]:
            rows = await _all(
                conn,
                "SELECT DISTINCT ON (document_id) document_id, attempts, last_error, "
                "updated_at, source FROM jobs WHERE state = 'failed' "
                "ORDER BY document_id, updated_at DESC, id DESC",
            )
            failed = [
                FailedJob(
                    r["document_id"],
                    r["attempts"],
                    r["last_error"] or "",
                    r["updated_at"],
                    JobSource(r["source"]),
                )
                for r in rows
            ]
            return sorted(failed, key=lambda f: f.failed_at, reverse=True)

        return await self.run(read)

    # -- backfill -----------------------------------------------------------------------
    async def begin_backfill(self, name: str, *, total: int | None, now: float) -> BackfillRun:
        async def write(conn: Conn) -> BackfillRun:
            row = await _one(
                conn,
                "INSERT INTO backfills (name, cursor, total, swept, queued, started_at, "
                "updated_at) VALUES (%(name)s, NULL, %(total)s, 0, 0, %(now)s, %(now)s) "
                "ON CONFLICT (name) DO UPDATE SET cursor = NULL, total = excluded.total, "
                "swept = 0, queued = 0, started_at = excluded.started_at, "
                "updated_at = excluded.updated_at, finished_at = NULL "
                "WHERE backfills.finished_at IS NOT NULL RETURNING *",
                {"name": name, "total": total, "now": now},
            )
            if row is None:  # an unfinished run: resume it
                row = await _one(conn, "SELECT * FROM backfills WHERE name = %s", (name,))
            assert row is not None
            return BackfillRun(**row)

        return await self.transaction(write)

    async def advance_backfill(
        self, name: str, requests: Sequence[JobRequest], *, cursor: str, now: float
    ) -> Accepted:
        merged = _merge(requests)

        async def write(conn: Conn) -> Accepted:
            rows = await _all(conn, _ACCEPT_UNKEYED, {"now": now, **_arrays(merged, None)})
            new = {row["document_id"]: row["new"] for row in rows}
            queued = tuple(r.document_id for r in merged if new.get(r.document_id))
            moved = await conn.execute(
                "UPDATE backfills SET cursor = %s, swept = swept + %s, queued = queued + %s, "
                "updated_at = %s WHERE name = %s AND finished_at IS NULL",
                (cursor, len(merged), len(queued), now, name),
            )
            if not moved.rowcount:
                raise ValueError(f"no unfinished backfill called {name!r}")
            if queued:
                await conn.execute(f"NOTIFY {CHANNEL}")
            return Accepted(
                queued=queued,
                coalesced=tuple(r.document_id for r in merged if not new.get(r.document_id)),
            )

        return await self.transaction(write)

    async def finish_backfill(self, name: str, *, now: float) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "UPDATE backfills SET finished_at = %(now)s, updated_at = %(now)s "
                "WHERE name = %(name)s AND finished_at IS NULL",
                {"now": now, "name": name},
            )

        await self.transaction(write)

    async def backfill(self, name: str) -> BackfillRun | None:
        async def read(conn: Conn) -> BackfillRun | None:
            row = await _one(conn, "SELECT * FROM backfills WHERE name = %s", (name,))
            return None if row is None else BackfillRun(**row)

        return await self.run(read)

    async def source_counts(self, source: JobSource, *, since: float) -> dict[JobState, int]:
        async def read(conn: Conn) -> dict[JobState, int]:
            counts = {state: 0 for state in JobState}
            for row in await _all(
                conn,
                "SELECT state, count(*) AS n FROM jobs WHERE source = %s AND created_at >= %s "
                "GROUP BY state",
                (source.value, since),
            ):
                counts[JobState(row["state"])] = row["n"]
            return counts

        return await self.run(read)

    async def stats(self, *, now: float) -> StoreStats:
        async def read(conn: Conn) -> StoreStats:
            counts = {state: 0 for state in JobState}
            by_source: dict[tuple[JobState, JobSource], int] = {}
            for row in await _all(
                conn, "SELECT state, source, count(*) AS n FROM jobs GROUP BY state, source"
            ):
                counts[JobState(row["state"])] += row["n"]
                by_source[JobState(row["state"]), JobSource(row["source"])] = row["n"]
            summary = await _one(
                conn,
                "SELECT (SELECT min(created_at) FROM jobs WHERE state = 'pending') AS oldest,"
                " (SELECT count(*) FROM assets) AS assets,"
                " (SELECT count(*) FROM store_attempts s WHERE attempts > 0 AND NOT EXISTS"
                "   (SELECT 1 FROM assets a WHERE a.asset_id = s.asset_id)) AS unanswered",
            )
            assert summary is not None
            running = await _all(
                conn,
                "SELECT document_id, lease_owner, attempts, updated_at, lease_until "
                "FROM jobs WHERE state = 'running' ORDER BY updated_at, id",
            )
            oldest = summary["oldest"]
            return StoreStats(
                counts=counts,
                oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
                stored_assets=summary["assets"],
                unanswered_stores=summary["unanswered"],
                running=tuple(RunningJob(*row.values()) for row in running),
                by_source=by_source,
            )

        return await self.run(read)

    async def next_due(self) -> float | None:
        async def read(conn: Conn) -> float | None:
            row = await _one(
                conn,
                "SELECT least((SELECT min(run_after) FROM jobs WHERE state = 'pending'),"
                " (SELECT min(lease_until) FROM jobs WHERE state = 'running')) AS due",
            )
            return None if row is None else row["due"]

        return await self.run(read)

    async def check_writable(self, *, budget: float) -> None:
        async def probe(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO probe (id, at, pad) VALUES (1, %(at)s, %(pad)s) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at, pad = excluded.pad",
                {"at": time.time(), "pad": bytes(_PROBE_BYTES)},
            )

        await self._within(budget, self.run(probe))

    async def prune(self, *, before: float) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute("DELETE FROM inbox WHERE received_at < %s", (before,))
            await conn.execute("DELETE FROM job_history WHERE ended_at < %s", (before,))

        await self.run(write)

    # -- the operator page --------------------------------------------------------------
    async def history(self, document_id: str, *, limit: int = HISTORY_PER_DOCUMENT) -> list[JobRun]:
        async def read(conn: Conn) -> list[JobRun]:
            rows = await _all(
                conn,
                f"SELECT {_RUN_COLUMNS} FROM job_history "  # noqa: S608 - our column list
                "WHERE document_id = %s ORDER BY id DESC LIMIT %s",
                (document_id, limit),
            )
            return [_run(row) for row in rows]

        return await self.run(read)

    async def run_counts(
        self, *, since: float, bucket: float, source: JobSource | None = None
    ) -> dict[tuple[int, RunOutcome], int]:
        async def read(conn: Conn) -> dict[tuple[int, RunOutcome], int]:
            rows = await _all(
                conn,
                "SELECT floor((ended_at - %(since)s) / %(bucket)s)::integer AS slot, outcome, "
                "count(*) AS n FROM job_history WHERE ended_at >= %(since)s "
                "AND (%(source)s::text IS NULL OR source = %(source)s) GROUP BY slot, outcome",
                {"since": since, "bucket": bucket, "source": source and source.value},
            )
            return {(row["slot"], RunOutcome(row["outcome"])): row["n"] for row in rows}

        return await self.run(read)

    async def recent_documents(self, *, limit: int) -> list[Job]:
        async def read(conn: Conn) -> list[Job]:
            rows = await _all(
                conn,
                "SELECT * FROM (SELECT DISTINCT ON (document_id) * FROM jobs "
                "  ORDER BY document_id, id DESC) AS latest "
                "ORDER BY updated_at DESC, id DESC LIMIT %s",
                (limit,),
            )
            return [_job(row) for row in rows]

        return await self.run(read)

    async def backfills(self) -> list[BackfillRun]:
        async def read(conn: Conn) -> list[BackfillRun]:
            rows = await _all(conn, "SELECT * FROM backfills ORDER BY updated_at DESC, name")
            return [BackfillRun(**row) for row in rows]

        return await self.run(read)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pool.close()


@dataclass(frozen=True)
class _Delivery:
    key: str | None
    requests: list[JobRequest]  # one per document (merged)
    now: float


class _Batcher:
    """Group commit for deliveries: those that arrive while a write is in flight go
    together in the next one. One writer at a time; a batch takes whatever waits."""

    def __init__(
        self, write: Callable[[list[_Delivery]], Awaitable[list[Accepted]]], limit: int = 128
    ) -> None:
        self._write = write
        self._limit = limit
        self._waiting: list[tuple[_Delivery, asyncio.Future[Accepted]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, delivery: _Delivery) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((delivery, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="cms-sync-pg-ingest")
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
            live = [(d, f) for d, f in batch if not f.done()]  # a caller timed out: skip
            if not live:
                continue
            try:
                results = await self._write([d for d, _ in live])
            except BaseException as exc:
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)


async def _accept_one(conn: Conn, delivery: _Delivery) -> Accepted:
    """One delivery in one statement: the inbox row gates the upsert of its jobs."""
    key, merged = delivery.key, delivery.requests
    params: dict[str, Any] = {"key": key, "now": delivery.now}
    if not merged:  # a delivery with nothing to queue still takes its key
        sql = _ACCEPT_KEY_ONLY
    elif len(merged) == 1 and key is not None:
        (one,) = merged
        params.update(
            doc=one.document_id, op=one.operation, nb=one.not_before, src=one.source.value
        )
        sql = _ACCEPT_KEYED_ONE
    else:
        params.update(_arrays(merged, key))
        sql = _ACCEPT_UNKEYED if key is None else _ACCEPT_KEYED
    rows = await _all(conn, sql, params)
    if not rows and key is not None:
        return Accepted(duplicate=True)
    if not merged:
        return Accepted()
    new = {row["document_id"]: row["new"] for row in rows}
    if any(new.values()):
        await conn.execute(f"NOTIFY {CHANNEL}")
    return Accepted(
        queued=tuple(r.document_id for r in merged if new[r.document_id]),
        coalesced=tuple(r.document_id for r in merged if not new[r.document_id]),
    )


async def _accept_many(conn: Conn, batch: list[_Delivery]) -> list[Accepted]:
    """Several deliveries in one statement (one round trip, atomic without BEGIN): their
    keys, then the requests of those whose key was new, merged by document.

    A key seen before (or earlier in the batch) makes its delivery a duplicate; the
    first delivery in the batch to name a document that had no pending job queued it,
    and every later one coalesced into it.
    """
    live: list[_Delivery | None] = []
    seen: set[str] = set()
    for delivery in batch:
        if delivery.key is not None and delivery.key in seen:
            live.append(None)  # the same key twice in one batch: the second is a duplicate
            continue
        if delivery.key is not None:
            seen.add(delivery.key)
        live.append(delivery)
    requests = [(d.key, r) for d in live if d is not None for r in d.requests]
    rows = await _all(
        conn,
        _ACCEPT_MANY,
        {
            "now": max(d.now for d in batch),
            "keys": sorted(seen),
            "docs": [r.document_id for _, r in requests],
            "ops": [r.operation for _, r in requests],
            "nbs": [r.not_before for _, r in requests],
            "srcs": [r.source.value for _, r in requests],
            "rkeys": [key for key, _ in requests],
        },
    )
    fresh = {row["name"] for row in rows if row["kind"] == "key"}
    new = {row["name"]: row["new"] for row in rows if row["kind"] == "doc"}
    results = []
    for written in live:
        if written is None or (written.key is not None and written.key not in fresh):
            results.append(Accepted(duplicate=True))
            continue
        docs = [r.document_id for r in written.requests]
        queued = tuple(doc for doc in docs if new.pop(doc, False))
        coalesced = tuple(doc for doc in docs if doc not in queued)
        results.append(Accepted(queued=queued, coalesced=coalesced))
    return results


# -- statements ---------------------------------------------------------------------------
#: Queue requests (arrays of one row per document): insert a pending job, or fold into the
#: document's pending job. A delivery leaves a backoff alone; a replay (``reset``) makes
#: the job due now, attempts from zero, and the operator's.
_UPSERT_JOBS = (
    "INSERT INTO jobs (document_id, state, run_after, operation, not_before, source, "
    "delivery_id, created_at, updated_at) "
    "SELECT d, 'pending', %(now)s, op, nb, src, did, %(now)s, %(now)s "
    "FROM {rows} AS r(d, op, nb, src, did) WHERE {gate} "
    "ON CONFLICT (document_id) WHERE state = 'pending' DO UPDATE SET "
    "run_after = CASE WHEN {reset} THEN excluded.run_after ELSE jobs.run_after END, "
    "updated_at = excluded.updated_at, read_retries = 0, "
    "operation = coalesce(excluded.operation, jobs.operation), "
    "not_before = CASE WHEN excluded.not_before IS NULL THEN jobs.not_before "
    "  WHEN jobs.not_before IS NULL THEN excluded.not_before "
    "  ELSE greatest(jobs.not_before, excluded.not_before) END, "
    "source = CASE WHEN {reset} THEN excluded.source ELSE jobs.source END, "
    "delivery_id = CASE WHEN {reset} THEN excluded.delivery_id "
    "  ELSE coalesce(excluded.delivery_id, jobs.delivery_id) END, "
    "attempts = CASE WHEN {reset} THEN 0 ELSE jobs.attempts END"
)

#: The requests as rows: arrays of one element per document, or (the usual delivery) one
#: document's values, which cost the client far less to send than arrays. The delivery's
#: key is every row's ``did``.
_ROWS = (
    "unnest(%(docs)s::text[], %(ops)s::text[], %(nbs)s::float8[], %(srcs)s::text[], "
    "%(dids)s::text[])"
)
_ONE_ROW = "(VALUES (%(doc)s::text, %(op)s::text, %(nb)s::float8, %(src)s::text, %(key)s::text))"
_RETURNING = " RETURNING document_id, xmax = 0 AS new"  # xmax = 0: inserted, not updated
_ACCEPT_UNKEYED = _UPSERT_JOBS.format(rows=_ROWS, gate="TRUE", reset="FALSE") + _RETURNING
#: The inbox row gates the upsert: one statement, one round trip, atomic without BEGIN.
_INBOX_ROW = (
    "WITH k AS (INSERT INTO inbox (idempotency_key, received_at) "
    "VALUES (%(key)s, %(now)s) ON CONFLICT DO NOTHING RETURNING 1) "
)
_ACCEPT_KEYED = (
    _INBOX_ROW
    + _UPSERT_JOBS.format(rows=_ROWS, gate="EXISTS (SELECT 1 FROM k)", reset="FALSE")
    + _RETURNING
)
_ACCEPT_KEYED_ONE = (
    _INBOX_ROW
    + _UPSERT_JOBS.format(rows=_ONE_ROW, gate="EXISTS (SELECT 1 FROM k)", reset="FALSE")
    + _RETURNING
)
_ACCEPT_KEY_ONLY = (
    "INSERT INTO inbox (idempotency_key, received_at) VALUES (%(key)s, %(now)s) "
    "ON CONFLICT DO NOTHING RETURNING idempotency_key AS document_id, TRUE AS new"
)
#: Deliveries written together: new keys gate their requests, which are merged by
#: document (latest operation and source, latest not_before) before the upsert; idle
#: workers are notified when a job is new. Returns the new keys and each document.
_MANY_HEAD = (
    "WITH k AS (INSERT INTO inbox (idempotency_key, received_at) "
    "  SELECT key, %(now)s FROM unnest(%(keys)s::text[]) AS key "
    "  ON CONFLICT DO NOTHING RETURNING idempotency_key), "
    "r AS (SELECT * FROM unnest(%(docs)s::text[], %(ops)s::text[], %(nbs)s::float8[], "
    "  %(srcs)s::text[], %(rkeys)s::text[]) WITH ORDINALITY AS r(d, op, nb, src, key, ord) "
    "  WHERE key IS NULL OR key IN (SELECT idempotency_key FROM k)), "
    "m AS (SELECT d, (array_agg(op ORDER BY ord DESC) FILTER (WHERE op IS NOT NULL))[1], "
    "  max(nb), (array_agg(src ORDER BY ord DESC))[1], "
    "  (array_agg(key ORDER BY ord DESC) FILTER (WHERE key IS NOT NULL))[1] "
    "  FROM r GROUP BY d), "
    "j AS ("
)
_MANY_TAIL = (
    " RETURNING document_id, xmax = 0 AS new) "
    "SELECT 'key' AS kind, idempotency_key AS name, TRUE AS new FROM k "
    "UNION ALL SELECT 'doc', document_id, new FROM j "
    "UNION ALL SELECT 'notified', '', TRUE FROM "
    "  (SELECT pg_notify('cms_sync_jobs', '') FROM j WHERE new LIMIT 1) AS n"
)
_ACCEPT_MANY = _MANY_HEAD + _UPSERT_JOBS.format(rows="m", gate="TRUE", reset="FALSE") + _MANY_TAIL
_ENQUEUE = _UPSERT_JOBS.format(rows=_ROWS, gate="TRUE", reset="TRUE") + _RETURNING

#: The next due job whose document runs nowhere, skipping rows another replica has locked.
_CLAIM = (
    "WITH next AS ("
    "  SELECT id FROM jobs AS j WHERE state = 'pending' AND run_after <= %(now)s"
    "  AND (%(doc)s::text IS NULL OR document_id = %(doc)s::text)"
    "  AND NOT EXISTS (SELECT 1 FROM jobs AS r"
    "    WHERE r.document_id = j.document_id AND r.state = 'running')"
    "  ORDER BY run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
    "UPDATE jobs SET state = 'running', attempts = jobs.attempts + 1, "
    "lease_owner = %(owner)s, lease_until = %(until)s, updated_at = %(now)s "
    "FROM next WHERE jobs.id = next.id RETURNING jobs.*"
)


def _merge(requests: Sequence[JobRequest]) -> list[JobRequest]:
    """One request per document, in first-seen order, folded as the store would fold
    them one after another (newest operation, latest ``not_before``, last source)."""
    merged: dict[str, JobRequest] = {}
    for r in requests:
        prior = merged.get(r.document_id)
        if prior is None:
            merged[r.document_id] = r
            continue
        times = [t for t in (prior.not_before, r.not_before) if t is not None]
        merged[r.document_id] = JobRequest(
            r.document_id,
            r.operation or prior.operation,
            max(times) if times else None,
            r.source,
        )
    return list(merged.values())


def _arrays(requests: Sequence[JobRequest], key: str | None) -> dict[str, list[Any]]:
    return {
        "docs": [r.document_id for r in requests],
        "ops": [r.operation for r in requests],
        "nbs": [r.not_before for r in requests],
        "srcs": [r.source.value for r in requests],
        "dids": [key] * len(requests),
    }


async def _update_owned(conn: Conn, job: Job, assignments: str, params: tuple[Any, ...]) -> bool:
    """Update a running job only while ``job.lease_owner`` still holds it."""
    cursor = await conn.execute(
        f"UPDATE jobs SET {assignments} "  # noqa: S608 - ours
        "WHERE id = %s AND state = 'running' AND lease_owner = %s",
        (*params, job.id, job.lease_owner),
    )
    return cursor.rowcount > 0


_RUN_COLUMNS = ", ".join(RUN_COLUMNS)
_RUN_PLACES = ", ".join("%s" for _ in RUN_COLUMNS)
#: Keeps a document's newest runs only (the index on (document_id, id) finds the cut).
_CAP_HISTORY = (
    "DELETE FROM job_history WHERE document_id = %(doc)s AND id <= (SELECT id FROM job_history "
    "  WHERE document_id = %(doc)s ORDER BY id DESC LIMIT 1 OFFSET %(keep)s)"
)


def _run(row: dict[str, Any]) -> JobRun:
    return JobRun(
        **{
            **row,
            "source": JobSource(row["source"]),
            "outcome": RunOutcome(row["outcome"]),
        }
    )


async def _log_run(
    conn: Conn, job: Job, outcome: RunOutcome, message: str | None, *, now: float
) -> None:
    """Keep one run in the document's history (claim time is the job's ``updated_at``)."""
    await conn.execute(
        f"INSERT INTO job_history ({_RUN_COLUMNS}) "  # noqa: S608 - our column list
        f"VALUES ({_RUN_PLACES})",
        run_row(job, outcome, message, now=now),
    )
    await conn.execute(_CAP_HISTORY, {"doc": job.document_id, "keep": HISTORY_PER_DOCUMENT})


async def _recover_expired(conn: Conn, *, now: float, max_attempts: int) -> None:
    """Running jobs whose lease ran out (their replica died) become runnable again.

    Cheap when there are none (an index on the leases); when two replicas recover at
    once, row locks order them and the second finds nothing left to do.
    """
    expired = await _one(
        conn, "SELECT 1 FROM jobs WHERE state = 'running' AND lease_until < %s LIMIT 1", (now,)
    )
    if expired is None:
        return
    try:
        async with conn.transaction():
            expired_docs = await _all(
                conn,
                f"INSERT INTO job_history ({_RUN_COLUMNS}) "  # noqa: S608 - our column list
                "SELECT document_id, id, attempts, source, 'expired', "
                "'lease expired: the worker stopped or crashed', updated_at, %(now)s, "
                "lease_owner FROM jobs WHERE state = 'running' AND lease_until < %(now)s "
                # Locked: a replica recovering at the same time waits, then finds them gone.
                "ORDER BY id FOR UPDATE RETURNING document_id",
                {"now": now},
            )
            for row in expired_docs:
                await conn.execute(
                    _CAP_HISTORY, {"doc": row["document_id"], "keep": HISTORY_PER_DOCUMENT}
                )
            await conn.execute(
                "DELETE FROM jobs WHERE state = 'running' AND lease_until < %s AND EXISTS ("
                "  SELECT 1 FROM jobs AS p WHERE p.document_id = jobs.document_id "
                "  AND p.state = 'pending')",
                (now,),
            )
            await conn.execute(
                "UPDATE jobs SET "
                "state = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'pending' END, "
                "last_error = CASE WHEN attempts >= %(max)s "
                "  THEN 'gave up after ' || attempts || ' attempts; the last one never "
                "finished (worker stopped or crashed)' "
                "  ELSE 'lease expired: the worker stopped or crashed' END, "
                "lease_owner = NULL, lease_until = NULL, run_after = %(now)s, "
                "updated_at = %(now)s WHERE state = 'running' AND lease_until < %(now)s",
                {"max": max_attempts, "now": now},
            )
            await conn.execute(f"NOTIFY {CHANNEL}")
    except psycopg.errors.UniqueViolation:
        # A delivery queued a pending job for the document between the two statements;
        # the next claim (on any replica) tries again.
        log.info("lease_recovery_deferred")


async def _configure(conn: Conn) -> None:
    """Bound every statement: a hung database must not hang the worker or a delivery."""
    await conn.execute("SET statement_timeout = '30s'")
    await conn.execute("SET idle_in_transaction_session_timeout = '60s'")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
