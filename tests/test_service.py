"""End to end in one process: signed delivery -> job -> store -> patch, all over sockets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cms_sync import signature
from cms_sync.app import create_app
from cms_sync.mapping import default_mapping
from fakes import FakeContentLake, FakeFilestack
from servers import RunningApp, run_app, serve
from wiring import make_settings

SECRET = "whsec-e2e"


@dataclass
class World:
    lake: FakeContentLake
    fs: FakeFilestack
    running: RunningApp
    http: httpx.Client
    sent: int = 0

    def deliver(self, doc: dict[str, str], *, operation: str = "update") -> httpx.Response:
        self.sent += 1
        body = json.dumps({"_id": doc["_id"], "_type": doc["_type"], "_rev": doc["_rev"]}).encode()
        return self.http.post(
            "/webhooks/sanity",
            content=body,
            headers={
                "content-type": "application/json",
                "idempotency-key": f"msg-{self.sent}",
                "sanity-operation": operation,
                "sanity-document-id": doc["_id"],
                "sanity-transaction-time": doc["_updatedAt"],
                signature.HEADER: signature.sign(SECRET, body, 1_763_700_000_000 + self.sent),
            },
        )

    def wait_idle(self) -> None:
        worker = self.running.service.worker

        async def idle() -> None:
            await asyncio.wait_for(worker.idle.wait(), 20)

        self.running.call(idle)


@contextmanager
def running_world(database: Path, **overrides: Any) -> Iterator[World]:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack(app_secret="fs-secret")
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        settings = make_settings(
            sanity_api_host=sanity_url,
            filestack_process_url=f"{filestack_url}/process",
            filestack_app_secret="fs-secret",
            sanity_webhook_secret=SECRET,
            cms_sync_database=database,
            cms_sync_retry_backoff=0,
            **overrides,
        )
        with (
            run_app(create_app(settings, mapping=default_mapping())) as running,
            httpx.Client(base_url=running.url, timeout=10) as http,
        ):
            yield World(lake, fs, running, http)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_world(tmp_path / "e2e.db") as world:
        yield world


def test_delivery_is_synced_and_the_echo_of_our_patch_changes_nothing(world: World) -> None:
    response = world.deliver(world.lake.documents["product-1"])
    assert response.status_code == 202
    world.wait_idle()
    assert len(world.fs.stores) == 5 and len(world.lake.mutations) == 1
    patched = world.lake.documents["product-1"]
    assert patched["mainImage"]["filestackSourceAsset"] == patched["mainImage"]["asset"]["_ref"]

    # Sanity fires an update webhook for our own patch: it must end here.
    assert world.deliver(patched).status_code == 202
    world.wait_idle()
    assert len(world.fs.stores) == 5 and len(world.lake.mutations) == 1


def test_readiness_reports_a_running_worker(world: World) -> None:
    assert world.http.get("/readyz").json() == {"status": "ready"}


def jobs_in(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as conn:
        return dict(conn.execute("SELECT document_id, count(*) FROM jobs GROUP BY 1").fetchall())


@pytest.mark.parametrize("fault", ["directory removed", "file replaced"])
def test_a_vanished_database_gets_503_never_an_acknowledgement(tmp_path: Path, fault: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with running_world(data / "jobs.db") as world:
        docs = world.lake.documents
        assert world.deliver(docs["product-1"]).status_code == 202
        world.wait_idle()
        if fault == "directory removed":
            shutil.rmtree(data)
        else:  # restored from a backup, say: a different file at the same path
            shutil.copy(data / "jobs.db", tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", data / "jobs.db")
        refused = world.deliver(docs["post-1"])
        ready = world.http.get("/readyz")
    assert refused.status_code == 503 and refused.json()["error"].startswith("job store")
    assert ready.status_code == 503
    assert "job store lost" in ready.json()["problems"][0]


def test_a_held_write_lock_gets_503_in_time_and_readyz_answers_within_a_second(
    tmp_path: Path,
) -> None:
    database = tmp_path / "jobs.db"
    with running_world(database, cms_sync_ingest_timeout=0.5) as world:
        docs = world.lake.documents
        assert world.http.get("/readyz").status_code == 200
        holder = sqlite3.connect(database, isolation_level=None)  # another process, say
        holder.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            refused = world.deliver(docs["product-1"])
            delivery_took = time.monotonic() - started
            started = time.monotonic()
            ready = world.http.get("/readyz")
            readyz_took = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert (refused.status_code, ready.status_code) == (503, 503)
        assert "busy" in ready.json()["problems"][0] or "locked" in ready.json()["problems"][0]
        # Bounded by the budgets (0.5 s and 0.8 s), not by SQLite's 10 s busy timeout;
        # the margin is for a loaded machine.
        assert delivery_took < 3 and readyz_took < 1.5
        assert world.deliver(docs["product-1"]).status_code == 202  # the lock is free again
        assert world.http.get("/readyz").status_code == 200
    assert jobs_in(database) == {"product-1": 1}
