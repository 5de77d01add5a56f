"""The operator use cases return data; the CLI and the operator page only render it.

Every test runs on both backends: ``status``, ``failures`` and ``replay`` must give the
same answers on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cms_sync import operations
from cms_sync.allowlist import AllowedHost
from cms_sync.cli import run_status
from cms_sync.document import Asset, Document, Slot
from cms_sync.errors import DocumentNotFound
from cms_sync.events import Remote
from cms_sync.filestack import transformation_url
from cms_sync.jobs import JobRequest, JobSource, JobState, RunOutcome
from cms_sync.metrics import CallRate, RecentCalls
from cms_sync.operator import chart
from cms_sync.planner import Plan, plan_document
from cms_sync.records import StoredAsset
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


# -- the operator page's data ------------------------------------------------------------
async def run_one(storage: Storage, doc_id: str, *, at: float, fail: bool = False) -> None:
    await storage.jobs.enqueue([JobRequest(doc_id)], now=at)
    job = await storage.jobs.claim(owner="w", now=at, lease=30, max_attempts=3, document_id=doc_id)
    assert job is not None
    if fail:
        await storage.jobs.fail(job, now=at, error="Filestack: HTTP 400 fs-secret")
    else:
        await storage.jobs.finish(job, now=at)


async def test_throughput_is_an_hour_of_minutes_with_the_newest_last(storage: Storage) -> None:
    now = 10_000.0
    await run_one(storage, "a", at=now - 3600)  # the first second of the window
    await run_one(storage, "b", at=now - 3601)  # just before it: left out
    await run_one(storage, "c", at=now - 30, fail=True)
    await run_one(storage, "d", at=now)  # ending right now: the last minute
    t = await operations.throughput(storage, now=now)
    assert len(t.slots) == 60 and t.since == now - 3600
    assert t.slots[0] == {RunOutcome.DONE: 1}
    assert t.slots[-1] == {RunOutcome.FAILED: 1, RunOutcome.DONE: 1}
    assert t.total(RunOutcome.DONE) == 2 and t.peak == 2


async def test_the_chart_stacks_each_minutes_runs_to_scale(storage: Storage) -> None:
    now = 10_000.0
    for n in range(7):
        await run_one(storage, f"d{n}", at=now - 1, fail=n == 0)
    t = await operations.throughput(storage, now=now)
    drawn = chart.bars(t, width=600, height=100)
    assert drawn.scale == 10  # 7 runs in the busiest minute: the next 1-2-5 step
    done, failed = drawn.bars
    assert (done.outcome, failed.outcome) == (RunOutcome.DONE, RunOutcome.FAILED)
    assert (done.height, failed.height) == (60.0, 10.0)
    assert failed.y + failed.height == done.y and done.y + done.height == 100
    assert done.minute == 0 and done.x == 590.5


async def test_backfill_progress_has_a_rate_and_an_eta(storage: Storage) -> None:
    now = 5_000.0
    await storage.jobs.begin_backfill("all:post", total=12, now=now - 600)
    ids = [f"p{n}" for n in range(6)]
    requests = [JobRequest(i, source=JobSource.BACKFILL) for i in ids]
    await storage.jobs.advance_backfill("all:post", requests, cursor="p5", now=now - 600)
    for n, doc_id in enumerate(ids):  # one every 100 s; three in the last five minutes
        job = await storage.jobs.claim(
            owner="w", now=now - 550 + n * 100, lease=30, max_attempts=3, document_id=doc_id
        )
        assert job is not None and await storage.jobs.finish(job, now=now - 550 + n * 100)
    (p,) = await operations.backfills(storage, now=now)
    assert p.run.name == "all:post" and p.jobs[JobState.DONE] == 6
    assert p.rate == pytest.approx(3 / 300)
    assert p.eta == pytest.approx(6 / (3 / 300))  # six of twelve left


async def test_a_document_view_plans_its_slots_and_scrubs_its_history(storage: Storage) -> None:
    await run_one(storage, "post-1", at=100, fail=True)
    stored = StoredAsset("image-a-1x1-png", "H2", "https://cdn.filestackcontent.com/H2", 3, "")
    await storage.records.put(stored)
    doc = Document(
        "post-1",
        "post",
        "r1",
        None,
        (
            Slot(
                "mainImage",
                asset=Asset("image-a-1x1-png", "https://cdn.sanity.io/a.png"),
            ),
            Slot(
                "cover",
                asset=Asset("image-b-1x1-png", "https://cdn.sanity.io/b.png"),
                handle="H1",
                url="https://cdn.filestackcontent.com/H1",
                mime_type="image/png",
                source_asset="image-b-1x1-png",
            ),
            Slot("pdf", asset=Asset("file-c-pdf", None)),
        ),
    )

    async def plan(document_id: str) -> Plan:
        return plan_document(doc, (AllowedHost("cdn.sanity.io"),))

    scrub = Scrubber(["fs-secret"])
    view = await operations.document(storage, "post-1", plan=plan, scrub=scrub)
    assert [(s.path, s.state) for s in view.slots or ()] == [
        ("mainImage", "stored"),  # a stored copy waits for its patch
        ("cover", "in sync"),
        ("pdf", "blocked"),
    ]
    assert view.slots is not None and view.slots[1].thumbnail == (
        "https://cdn.filestackcontent.com/resize=width:160/H1"
    )
    assert view.slots[0].thumbnail is None  # no handle on the slot yet
    hostile = dataclasses.replace(view.slots[1], url="javascript:alert(1)//H1")
    assert hostile.link is None and hostile.thumbnail is None
    (run,) = view.history
    assert run.message is not None and "fs-secret" not in run.message
    assert view.latest is not None and "fs-secret" not in (view.latest.last_error or "")

    async def unreadable(document_id: str) -> Plan:
        raise DocumentNotFound(document_id)

    gone = await operations.document(storage, "post-1", plan=unreadable, scrub=scrub)
    assert gone.slots is None and gone.read_error and "post-1" in gone.read_error
    assert len(gone.history) == 1

    async def hanging(document_id: str) -> Plan:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    slow = await operations.document(storage, "post-1", plan=hanging, scrub=scrub, read_within=0.05)
    assert slow.read_error == "Sanity did not answer within 0.05 s" and len(slow.history) == 1


def test_a_transformation_url_goes_before_the_handle_on_the_same_host() -> None:
    assert (
        transformation_url("http://127.0.0.1:9/Hh", "Hh", "resize=width:160")
        == "http://127.0.0.1:9/resize=width:160/Hh"
    )
    assert transformation_url("https://x/other", "Hh", "resize=width:160") == "https://x/other"


def test_recent_calls_count_errors_over_the_last_hour_only() -> None:
    now = [0.0]
    calls = RecentCalls(clock=lambda: now[0])
    for outcome in ("2xx", "2xx", "5xx", "429"):
        calls.add(Remote.FILESTACK, outcome)
    now[0] = 1800.0
    calls.add(Remote.SANITY, "2xx")
    rates = calls.rates()
    assert rates[Remote.FILESTACK] == CallRate(calls=4, errors=2, throttled=1)
    assert rates[Remote.FILESTACK].error_rate == 0.5
    now[0] = 3600.0  # the first minute has left the window
    rates = calls.rates()
    assert rates[Remote.FILESTACK] == CallRate(0, 0, 0)
    assert rates[Remote.FILESTACK].error_rate is None and rates[Remote.SANITY].calls == 1
