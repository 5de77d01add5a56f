"""End to end in one process: signed delivery -> job -> store -> patch, all over sockets."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_world import World, running_world


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
