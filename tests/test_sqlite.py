"""What only the SQLite job store does: migrate a database written by older code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cms_sync.jobs import JobSource
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
