from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cms_sync.backoff import Backoff
from cms_sync.errors import (
    AuthenticationError,
    ConnectError,
    DocumentNotFound,
    InternalError,
    RejectedError,
    RevisionConflict,
    SlotBlocked,
    StaleRead,
    UnmappedType,
)
from cms_sync.events import Event, Events, JobEnded
from cms_sync.jobs import FailedJob, Job, JobRequest, JobSource, JobState
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.mapping import default_mapping
from cms_sync.sync import SlotFailure, SyncReport, open_syncer
from cms_sync.timestamps import parse_timestamp
from cms_sync.worker import Verdict, Worker, WorkerOptions, judge
from fakes import FakeContentLake, FakeFilestack
from wiring import Clock, make_settings, no_wait_policy

pytestmark = pytest.mark.anyio

START = 1_800_000_000.0


def replays(failures: list[FailedJob]) -> list[JobRequest]:
    return [JobRequest(f.document_id, source=JobSource.REPLAY) for f in failures]


@dataclass
class Rig:
    lake: FakeContentLake
    fs: FakeFilestack
    store: SQLiteJobStore
    worker: Worker
    clock: Clock

    async def deliver(
        self, *doc_ids: str, operation: str | None = "update", tt: float | None = None
    ) -> None:
        await self.store.accept(
            None, [JobRequest(d, operation, tt) for d in doc_ids], now=self.clock()
        )

    async def job(self, doc_id: str) -> dict[str, Any]:
        def read(conn: Any) -> dict[str, Any]:
            row = conn.execute(
                "SELECT * FROM jobs WHERE document_id = ? ORDER BY id DESC LIMIT 1", (doc_id,)
            ).fetchone()
            return dict(row)

        return await self.store.run(read)


SCHEDULE = Backoff(base=10, maximum=900, max_attempts=4, jitter=0.2, rng=random.Random(1))


@asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    options: WorkerOptions | None = None,
    fs: FakeFilestack | None = None,
    filestack_transport: httpx.AsyncBaseTransport | None = None,
    events: Events | None = None,
) -> AsyncIterator[Rig]:
    lake, fs = FakeContentLake.from_fixtures(), fs or FakeFilestack()
    clock = Clock(START)
    store = await SQLiteJobStore.open(tmp_path / "jobs.db")
    try:
        async with open_syncer(
            make_settings(),
            default_mapping(),
            store.records,
            retry=no_wait_policy(),
            sanity_transport=httpx.MockTransport(lake),
            filestack_transport=filestack_transport or httpx.MockTransport(fs),
            clock=clock,
        ) as syncer:
            worker = Worker(
                store,
                syncer,
                options or WorkerOptions(schedule=SCHEDULE),
                clock=clock,
                events=events,
            )
            yield Rig(lake, fs, store, worker, clock)
    finally:
        await store.close()


def job(**kw: Any) -> Job:
    values: dict[str, Any] = dict(
        id=1,
        document_id="d",
        state=JobState.RUNNING,
        attempts=1,
        run_after=0,
        created_at=0,
        updated_at=0,
        operation="update",
    )
    values.update(kw)
    return Job(**values)


def report(error: Any = None, failures: list[SlotFailure] | None = None) -> SyncReport:
    return SyncReport(document_id="d", error=error, failures=failures or [])


HTTP = dict(body="", error_type=None)


@pytest.mark.parametrize(
    ("sync_report", "the_job", "verdict"),
    [
        (report(), job(), Verdict.DONE),
        (report(UnmappedType("d", "page", ["post"])), job(), Verdict.DONE),
        (report(ConnectError("Filestack", "refused")), job(), Verdict.RETRY),
        (report(RevisionConflict("Sanity", 409, "x", **HTTP)), job(), Verdict.RETRY),
        (report(AuthenticationError("Sanity", 401, "x", **HTTP)), job(), Verdict.RETRY),
        (report(RejectedError("Sanity", 400, "bad query", **HTTP)), job(), Verdict.FAIL),
        (report(InternalError("boom")), job(), Verdict.RETRY),
        (report(StaleRead("d", None, 1.0)), job(read_retries=0), Verdict.RETRY_SOON),
        (report(DocumentNotFound("d")), job(operation="create"), Verdict.RETRY_SOON),
        (report(DocumentNotFound("d")), job(operation="create", read_retries=3), Verdict.FAIL),
        (report(DocumentNotFound("d")), job(operation=None), Verdict.FAIL),
        (report(failures=[SlotFailure("a", SlotBlocked("a", "host"))]), job(), Verdict.FAIL),
        (
            report(
                failures=[
                    SlotFailure("a", SlotBlocked("a", "host")),
                    SlotFailure("b", ConnectError("Filestack", "refused")),
                ]
            ),
            job(),
            Verdict.RETRY,
        ),
        (
            report(
                failures=[SlotFailure("a", RejectedError("Filestack", 400, "Invalid URL", **HTTP))]
            ),
            job(),
            Verdict.FAIL,
        ),
    ],
)
def test_judge(sync_report: SyncReport, the_job: Job, verdict: Verdict) -> None:
    assert judge(sync_report, the_job, read_retries=3).verdict is verdict


async def test_delivery_to_patched_then_our_own_update_changes_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.deliver("product-1")
        assert await r.worker.drain() == 1
        assert len(r.fs.stores) == 5 and len(r.lake.mutations) == 1
        assert (await r.job("product-1"))["state"] == "done"

        await r.deliver("product-1")  # Sanity's update event for our own patch
        assert await r.worker.drain() == 1
        assert len(r.fs.stores) == 5 and len(r.lake.mutations) == 1
        stats = await r.store.stats(now=r.clock())
        assert stats.counts[JobState.DONE] == 1 and stats.stored_assets == 5


class Recorder:
    def __init__(self) -> None:
        self.ended: list[JobEnded] = []

    def emit(self, event: Event) -> None:
        if isinstance(event, JobEnded):
            self.ended.append(event)


async def test_listeners_hear_each_job_end_with_what_was_recorded(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text="slow down")

    fs, heard = FakeFilestack(), Recorder()
    async with rig(tmp_path, fs=fs, events=heard) as r:
        await r.deliver("product-1")
        await r.worker.drain()
        (done,) = heard.ended
        assert (done.job.document_id, done.verdict, done.stored, done.reused) == (
            "product-1",
            Verdict.DONE,
            5,
            0,
        )
        assert done.kept and done.unrecorded is None and done.delay is None

        fs.scripted = [refuse] * 100
        await r.deliver("post-1")
        await r.worker.drain()
        retry = heard.ended[-1]
        assert retry.verdict is Verdict.RETRY and retry.message is not None
        assert "HTTP 429" in retry.message
        row = await r.job("post-1")
        assert retry.delay == pytest.approx(row["run_after"] - r.clock())


async def test_retry_schedule_then_dead_letter_without_sleeping(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        # 429: retryable, and certainly stored nothing (a 5xx may have: see test_ambiguity)
        return httpx.Response(429, text="slow down")

    fs = FakeFilestack()
    fs.scripted = [refuse] * 100
    async with rig(tmp_path, fs=fs) as r:
        await r.deliver("post-1")
        for attempt in range(1, SCHEDULE.max_attempts):
            assert await r.worker.drain() == 1
            row = await r.job("post-1")
            assert (row["state"], row["attempts"]) == ("pending", attempt)
            delay = row["run_after"] - r.clock()
            nominal = SCHEDULE.nominal_delay(attempt)
            assert nominal * 0.8 <= delay <= nominal * 1.2
            r.clock.advance(delay - 0.01)
            assert await r.worker.drain() == 0  # not due yet
            r.clock.advance(0.01)
        assert await r.worker.drain() == 1
        (failure,) = await r.store.failures()
        assert failure.attempts == SCHEDULE.max_attempts
        assert failure.last_error.startswith(
            "gave up after 4 attempts: mainImage: Filestack: HTTP 429"
        )
        assert r.lake.mutations == []


async def test_permanent_refusal_fails_at_once_and_replay_recovers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        url = r.lake.documents[r.lake.documents["post-1"]["mainImage"]["asset"]["_ref"]]["url"]
        r.fs.refuse.add(url)
        await r.deliver("post-1")
        await r.worker.drain()
        (failure,) = await r.store.failures()
        assert failure.attempts == 1
        assert "HTTP 400 Bad Request: Invalid URL" in failure.last_error

        r.fs.refuse.clear()  # the cause is fixed
        await r.store.enqueue(replays(await r.store.failures()), now=r.clock())
        await r.worker.drain()
        assert await r.store.failures() == []
        assert r.lake.slot_value("post-1", "mainImage")["filestackHandle"]


async def test_stale_read_waits_briefly_then_syncs_what_is_there(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        doc_time = parse_timestamp(r.lake.documents["post-1"]["_updatedAt"])
        assert doc_time is not None
        await r.deliver("post-1", tt=doc_time + 60)  # announced newer than what we can read
        for n in range(1, 4):
            await r.worker.drain()
            row = await r.job("post-1")
            assert (row["state"], row["read_retries"]) == ("pending", n)
            assert row["run_after"] == r.clock() + 2.0
            r.clock.advance(2.0)
        await r.worker.drain()
        assert (await r.job("post-1"))["state"] == "done"
        assert len(r.lake.mutations) == 1


async def test_fresh_read_passes_the_check(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        doc_time = parse_timestamp(r.lake.documents["post-1"]["_updatedAt"])
        assert doc_time is not None
        await r.deliver("post-1", tt=doc_time + 0.4)  # same second, ms precision
        await r.worker.drain()
        assert (await r.job("post-1"))["state"] == "done"


async def test_created_document_not_yet_readable_is_retried_then_failed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.deliver("brand-new", operation="create")
        for _ in range(3):
            await r.worker.drain()
            assert (await r.job("brand-new"))["state"] == "pending"
            r.clock.advance(2.0)
        await r.worker.drain()
        (failure,) = await r.store.failures()
        assert failure.last_error == "no published document with id 'brand-new'"


async def test_unmapped_type_is_done_not_failed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.deliver("page-about")
        await r.worker.drain()
        row = await r.job("page-about")
        assert row["state"] == "done" and row["last_error"].startswith("ignored:")


async def test_lease_expiry_after_a_crash_lets_another_worker_finish(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.deliver("post-1")
        crashed = await r.store.claim(owner="dead", now=r.clock(), lease=60, max_attempts=11)
        assert crashed is not None
        assert await r.worker.drain() == 0  # still leased to the dead worker
        r.clock.advance(61)
        assert await r.worker.drain() == 1
        row = await r.job("post-1")
        assert (row["state"], row["attempts"]) == ("done", 2)
        assert len(r.lake.mutations) == 1


async def test_a_bug_in_a_job_is_recorded_and_retried(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:

        async def explode(*args: Any, **kwargs: Any) -> SyncReport:
            raise ZeroDivisionError("oops")

        r.worker._syncer.sync = explode  # type: ignore[method-assign]
        await r.deliver("post-1")
        await r.worker.drain()
        row = await r.job("post-1")
        assert row["state"] == "pending"
        assert "internal error: ZeroDivisionError('oops')" in row["last_error"]


class Gate(httpx.AsyncBaseTransport):
    """A Filestack transport that holds every request until released."""

    def __init__(self, fs: FakeFilestack) -> None:
        self.fs = fs
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.entered.set()
        await self.release.wait()
        await request.aread()
        return self.fs(request)


@pytest.mark.parametrize(("grace", "finishes"), [(5.0, True), (0.0, False)])
async def test_stop_gives_running_jobs_the_grace_period_then_releases_them(
    tmp_path: Path, grace: float, finishes: bool
) -> None:
    fs = FakeFilestack()
    gate = Gate(fs)
    options = WorkerOptions(schedule=SCHEDULE, shutdown_grace=grace)
    async with rig(tmp_path, options=options, fs=fs, filestack_transport=gate) as r:
        await r.deliver("post-1")
        r.worker.start()
        await asyncio.wait_for(gate.entered.wait(), 5)
        stopping = asyncio.create_task(r.worker.stop())
        await asyncio.sleep(0)  # let stop() begin: it must not claim nor cancel at once
        if finishes:
            gate.release.set()
        await asyncio.wait_for(stopping, 5)
        row = await r.job("post-1")
        if finishes:
            assert (row["state"], len(fs.stores)) == ("done", 1)
        else:  # released unrun: the attempt is given back
            assert (row["state"], row["attempts"], fs.stores) == ("pending", 0, [])


async def test_running_worker_picks_up_woken_work_and_goes_idle(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.worker.start()
        await asyncio.wait_for(r.worker.idle.wait(), 5)
        await r.deliver("post-1", "product-1")
        r.worker.wake()
        await asyncio.wait_for(r.worker.idle.wait(), 5)
        await r.worker.stop()
        patched = [m["patch"]["id"] for request in r.lake.mutations for m in request]
        assert sorted(patched) == ["post-1", "product-1"]  # in one request or two
        assert not r.worker.running


async def test_every_claim_owns_one_document_at_a_time(tmp_path: Path) -> None:
    """Concurrency N, one document: deliveries while it runs queue one follow-up job."""
    fs = FakeFilestack()
    gate = Gate(fs)
    async with rig(tmp_path, fs=fs, filestack_transport=gate) as r:
        await r.deliver("post-1")
        r.worker.start()
        await asyncio.wait_for(gate.entered.wait(), 5)
        for _ in range(3):
            await r.deliver("post-1")
            r.worker.wake()
        gate.release.set()
        r.worker.wake()
        await asyncio.wait_for(r.worker.idle.wait(), 5)
        await r.worker.stop()
        assert len(fs.stores) == 1 and len(r.lake.mutations) == 1
        stats = await r.store.stats(now=r.clock())
        assert stats.counts[JobState.DONE] == 1 and stats.counts[JobState.PENDING] == 0
