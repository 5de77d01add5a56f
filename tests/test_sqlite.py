"""What only the SQLite job store does: migrate a database written by older code, and
write the deliveries that queue together in a few statements."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from cms_sync.jobs import JobRequest, JobSource
from cms_sync.jobstore.sqlite import SCHEMA_VERSION, SQLiteJobStore

pytestmark = pytest.mark.anyio

#: The jobs table as schema 3 had it (before not_before and source).
SCHEMA_3_JOBS = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    operation TEXT,
    transaction_time REAL,
    read_retries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


async def test_a_schema_3_database_keeps_its_jobs_with_their_times(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_3_JOBS)
        conn.execute(
            "INSERT INTO jobs (document_id, state, run_after, operation, transaction_time, "
            "created_at, updated_at) VALUES ('post-1', 'pending', 0, 'update', 5.0, 0, 0)"
        )
        conn.execute("PRAGMA user_version = 3")
    store = await SQLiteJobStore.open(path)
    try:
        job = await store.claim(owner="w", now=1, lease=30, max_attempts=3)
        assert job is not None
        assert (job.document_id, job.not_before, job.source, job.delivery_id) == (
            "post-1",
            5.0,
            JobSource.WEBHOOK,
            None,  # schema 5's column, empty for jobs from before it
        )
        assert await store.finish(job, now=2)
        (run,) = await store.history("post-1")  # schema 6's table
        assert (run.job_id, run.ended_at) == (job.id, 2)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_deliveries_queued_together_are_written_in_a_few_statements(
    tmp_path: Path,
) -> None:
    # Each statement gives the GIL back to a busy event loop and waits for it, so a
    # batch of deliveries must cost a constant number of statements, not a few each.
    store = await SQLiteJobStore.open(tmp_path / "jobs.db")
    try:
        await store.accept("seen", [JobRequest("z")], now=0)
        statements: list[str] = []
        entered, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:  # on the ingest thread
            conn.set_trace_callback(statements.append)
            entered.set()
            release.wait(5)

        held = asyncio.ensure_future(store._ingest.submit(hold, budget=5))
        assert await asyncio.to_thread(entered.wait, 5)
        batches = store._ingest.batches
        deliveries = [
            (f"k{n}", [JobRequest(f"post-{n % 7}", "update", float(n))]) for n in range(40)
        ]
        deliveries += [("k3", [JobRequest("post-9")]), ("seen", [JobRequest("post-9")])]
        accepted = [asyncio.ensure_future(store.accept(k, r, now=1)) for k, r in deliveries]
        await asyncio.sleep(0)  # every accept has queued its delivery
        release.set()
        await held
        results = await asyncio.gather(*accepted)

        assert store._ingest.batches == batches + 2  # the held one; the 42 in one more
        writes = [s for s in statements if not s.startswith(("BEGIN", "COMMIT", "PRAGMA"))]
        assert len(writes) <= 3, writes
        assert [r.queued for r in results[:7]] == [(f"post-{n}",) for n in range(7)]
        assert all(r.coalesced == (f"post-{n % 7}",) for n, r in enumerate(results[7:40], 7))
        assert results[40].duplicate and results[41].duplicate  # a repeat in the batch; seen
        jobs = {}
        while (job := await store.claim(owner="w", now=2, lease=30, max_attempts=3)) is not None:
            jobs[job.document_id] = job
        assert set(jobs) == {"z", *(f"post-{n}" for n in range(7))}
        # Each folded as one after another would: the latest not_before and delivery.
        assert (jobs["post-3"].not_before, jobs["post-3"].delivery_id) == (38.0, "k38")
    finally:
        await store.close()
