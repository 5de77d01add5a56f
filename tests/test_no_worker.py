"""``cms-sync serve --no-worker``: one process acknowledges deliveries, another
``cms-sync serve`` on the same SQLite database syncs them. Real processes over sockets.

The split keeps the worker's HTTP calls and SQLite hand-offs off the event loop that
answers Sanity (``bench/README.md``, ``bench/ingest.py --split-worker``). Where the test
waits for the other process it polls with a deadline.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from process import ServeProcess

from fakes import FakeContentLake, FakeFilestack
from scenarios import catalogue, converged
from senders import SECRET, Deliveries
from servers import serve
from wiring import crash_test_env

TOKEN = "sk-test-token"


def rows(database: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as conn:
        return conn.execute(sql).fetchall()


def wait(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_serve_without_its_worker_acknowledges_and_another_on_the_database_syncs(
    tmp_path: Path,
) -> None:
    documents = catalogue(products=3, posts=2, shared=2)
    lake = FakeContentLake(documents={d["_id"]: d for d in documents}, token=TOKEN)
    fs = FakeFilestack()
    synced = [d for d in documents if d["_type"] in ("product", "post")]
    database = tmp_path / "jobs.db"
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = crash_test_env(
            sanity_url,
            filestack_url,
            SANITY_WEBHOOK_SECRET=SECRET,
            CMS_SYNC_DATABASE=str(database),
        )
        front = ServeProcess(env, tmp_path, args=("--no-worker",))
        sender = Deliveries(front.url)
        try:
            front.wait_for(lambda e: e.get("event") == "worker_not_started", 10)
            # ready: it can write deliveries, and it has no worker to wait for
            assert httpx.get(f"{front.url}/readyz").status_code == 200
            for doc in synced:
                assert sender.post(sender.groq(doc["_id"], doc["_type"])) == 202
            # on disk, and nobody here runs them
            assert rows(database, "SELECT state, lease_owner FROM jobs") == [
                ("pending", None)
            ] * len(synced)
            assert lake.commits == [] and fs.stores == []

            back = ServeProcess(env, tmp_path)
            try:
                ids = [d["_id"] for d in synced]
                wait(lambda: converged(lake.documents, ids))
                wait(lambda: len(rows(database, "SELECT 1 FROM job_history")) >= len(ids))
                runners = {str(w) for (w,) in rows(database, "SELECT worker FROM job_history")}
                assert all(f":{back.proc.pid}:" in runner for runner in runners), runners
                assert rows(database, "SELECT DISTINCT state FROM jobs") == [("done",)]
            finally:
                back.terminate()
                back.close()
            # a delivery later is still acknowledged by the process without a worker
            assert sender.post(sender.groq(synced[0]["_id"], synced[0]["_type"])) == 202
        finally:
            sender.http.close()
            front.terminate()
            front.close()
