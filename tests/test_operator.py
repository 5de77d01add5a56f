"""``replay --now`` racing the running service for the same job, in process, clock injected."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cms_sync.app import worker_options
from cms_sync.cli import EXIT_FAILED, EXIT_OK, ReplayNow
from cms_sync.jobs import Job, JobRequest, JobSource
from cms_sync.mapping import default_mapping
from cms_sync.settings import Settings
from cms_sync.sqlite import SQLiteJobStore
from cms_sync.storage import Storage
from cms_sync.worker import Worker
from fakes import FakeContentLake, FakeFilestack
from wiring import Clock, make_settings, store_and_syncer

pytestmark = pytest.mark.anyio

START = 1_800_000_000.0


@dataclass
class Race:
    store: SQLiteJobStore
    service: Worker  # the running service, sharing the store
    clock: Clock
    lake: FakeContentLake
    fs: FakeFilestack
    settings: Settings

    @property
    def storage(self) -> Storage:
        return Storage(self.store, self.store.records)

    def replay_now(self, sleep: Callable[[float], Awaitable[None]]) -> ReplayNow:
        return ReplayNow(self.settings, default_mapping(), clock=self.clock, sleep=sleep)


@asynccontextmanager
async def race(tmp_path: Path) -> AsyncIterator[tuple[Race, Job]]:
    # replay --now's own clients point at a closed port: in these races it never syncs.
    settings = make_settings(
        sanity_api_host="http://127.0.0.1:9",
        filestack_process_url="http://127.0.0.1:9/process",
        cms_sync_job_lease=30,
    )
    lake, fs, clock = FakeContentLake.from_fixtures(), FakeFilestack(), Clock(START)
    async with store_and_syncer(
        tmp_path / "jobs.db",
        sanity=httpx.MockTransport(lake),
        filestack=httpx.MockTransport(fs),
        settings=settings,
        clock=clock,
    ) as (store, syncer):
        service = Worker(store, syncer, worker_options(settings), clock=clock)
        race = Race(store, service, clock, lake, fs, settings)
        await store.enqueue([JobRequest("post-1", source=JobSource.REPLAY)], now=clock())
        claimed = await service.claim_document("post-1")  # the service is first
        assert claimed is not None
        yield race, claimed


async def test_when_the_service_claims_first_replay_now_reports_its_outcome(
    tmp_path: Path,
) -> None:
    async with race(tmp_path) as (r, claimed):
        waits: list[float] = []

        async def service_finishes(seconds: float) -> None:
            waits.append(seconds)
            await r.service.execute(claimed)

        out = io.StringIO()
        code = await r.replay_now(service_finishes).run(
            Storage(r.store, r.store.records), ["post-1"], out=out
        )
    assert (code, out.getvalue()) == (
        EXIT_OK,
        "post-1: synced by the running service, which claimed it first\n",
    )
    assert len(waits) == 1 and len(r.fs.stores) == 1  # stored once, by the service


async def test_a_failure_in_the_service_is_reported_as_a_failure(tmp_path: Path) -> None:
    async with race(tmp_path) as (r, claimed):
        image = r.lake.documents["post-1"]["mainImage"]["asset"]["_ref"]
        r.fs.refuse.add(r.lake.documents[image]["url"])

        async def service_fails(seconds: float) -> None:
            await r.service.execute(claimed)  # refused for good: failed at once

        out = io.StringIO()
        code = await r.replay_now(service_fails).run(
            Storage(r.store, r.store.records), ["post-1"], out=out
        )
    (line,) = out.getvalue().splitlines()
    assert code == EXIT_FAILED
    assert line.startswith("post-1: error: failed in the running service: ")
    assert "Invalid URL" in line


async def test_a_service_that_is_still_running_it_is_waited_for_then_named(
    tmp_path: Path,
) -> None:
    async with race(tmp_path) as (r, claimed):

        async def time_passes(seconds: float) -> None:
            r.clock.advance(seconds)  # the service is alive: its heartbeat renews the lease
            assert await r.store.renew(claimed, until=r.clock() + 30)

        out = io.StringIO()
        code = await r.replay_now(time_passes).run(
            Storage(r.store, r.store.records), ["post-1"], out=out
        )
    assert code == EXIT_FAILED
    assert out.getvalue() == (
        "post-1: error: the running service is still running it after 30 s "
        "(cms-sync status shows when it ends)\n"
    )
