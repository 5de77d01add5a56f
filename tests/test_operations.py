"""The operator use cases return data; the CLI and the operator page only render it.

Every test runs on both backends: ``status``, ``failures`` and ``replay`` must give the
same answers on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cms_sync import operations
from cms_sync.cli import run_status
from cms_sync.jobs import JobRequest, JobState
from cms_sync.scrub import Scrubber
from cms_sync.settings import OperatorSettings
from cms_sync.storage import Storage, open_storage

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "jobs.db")


@pytest.fixture
async def storage(database: str) -> AsyncIterator[Storage]:
    async with open_storage(database) as storage:
        yield storage


async def claim(storage: Storage, owner: str, now: float) -> None:
    job = await storage.jobs.claim(owner=owner, now=now, lease=30, max_attempts=3)
    assert job is not None


async def test_status_names_the_replica_running_each_job(storage: Storage) -> None:
    await storage.jobs.accept("k", [JobRequest(d) for d in ("a", "b", "c", "d")], now=0)
    await claim(storage, "host-1:10:aa", now=1)
    await claim(storage, "host-2:20:bb", now=2)
    await claim(storage, "host-1:10:aa", now=3)

    state = await operations.status(storage, now=5)

    assert state.jobs[JobState.RUNNING] == 3 and state.jobs[JobState.PENDING] == 1
    assert state.oldest_pending_age == 5
    by_owner = {
        owner: [(j.document_id, j.started_at, j.lease_until) for j in jobs]
        for owner, jobs in state.by_owner().items()
    }
    assert by_owner == {
        "host-1:10:aa": [("a", 1, 31), ("c", 3, 33)],
        "host-2:20:bb": [("b", 2, 32)],
    }


async def test_failures_come_scrubbed(storage: Storage) -> None:
    await storage.jobs.accept("k", [JobRequest("a")], now=0)
    job = await storage.jobs.claim(owner="w", now=1, lease=30, max_attempts=3)
    assert job is not None
    # Stored before the token was configured as a secret: scrubbed on the way out.
    await storage.jobs.fail(job, now=2, error="HTTP 401: token sk-live-123 refused")

    (failed,) = await operations.failures(storage, scrub=Scrubber(["sk-live-123"]))

    assert failed.document_id == "a" and "sk-live-123" not in failed.last_error


async def test_replay_refuses_what_cannot_sync_and_names_the_unseen(storage: Storage) -> None:
    await storage.jobs.accept("k", [JobRequest("a")], now=0)
    job = await storage.jobs.claim(owner="w", now=1, lease=30, max_attempts=3)
    assert job is not None
    await storage.jobs.fail(job, now=2, error="refused")

    replayed = await operations.replay(storage, ["drafts.b", "never-seen"], all_failed=True, now=3)

    assert replayed.queued == ("never-seen", "a")
    assert set(replayed.refused) == {"drafts.b"} and not replayed.ok
    assert replayed.unseen == ("never-seen",)
    assert await operations.failures(storage, scrub=Scrubber()) == []


async def test_replay_with_nothing_failed_queues_nothing(storage: Storage) -> None:
    replayed = await operations.replay(storage, [], all_failed=True, now=0)
    assert replayed == operations.Replayed() and replayed.ok


async def test_the_cli_shows_each_replicas_running_jobs(storage: Storage, database: str) -> None:
    await storage.jobs.accept("k", [JobRequest(d) for d in ("a", "b")], now=time.time())
    await claim(storage, "pod-7f9c:1:aa", now=time.time())
    await claim(storage, "pod-2b1d:1:bb", now=time.time())
    out = io.StringIO()

    await run_status(
        OperatorSettings(_env_file=None, cms_sync_database=database), as_json=False, out=out
    )

    lines = out.getvalue().splitlines()
    assert lines[0].startswith("jobs: pending 0, running 2, done 0, failed 0;")
    assert lines[1].startswith("running on pod-7f9c:1:aa: a (")
    assert lines[2].startswith("running on pod-2b1d:1:bb: b (")
