"""``replay --now`` racing the running service for the same job, in process, clock injected."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cms_sync.cli import format_replay_run
from cms_sync.jobs import Job, JobRequest, JobSource
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.operations import ReplayNow
from cms_sync.settings import Settings
from cms_sync.storage import Storage
from cms_sync.sync import Syncer
from cms_sync.worker import Worker, worker_options
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
    syncer: Syncer

    @property
    def storage(self) -> Storage:
        return Storage(self.store, self.store.records)

    async def replay_now(self, sleep: Callable[[float], Awaitable[None]]) -> list[str]:
        """``replay --now post-1`` as the CLI would print it; its syncs would be counted
        in the same fakes as the service's."""
        runner = ReplayNow(worker_options(self.settings), clock=self.clock, sleep=sleep)
        return [
            format_replay_run(run)
            async for run in runner.run(self.storage, self.syncer, ["post-1"])
        ]


@asynccontextmanager
async def race(tmp_path: Path) -> AsyncIterator[tuple[Race, Job]]:
    settings = make_settings(cms_sync_job_lease=30)
    lake, fs, clock = FakeContentLake.from_fixtures(), FakeFilestack(), Clock(START)
    async with store_and_syncer(
        tmp_path / "jobs.db",
        sanity=httpx.MockTransport(lake),
        filestack=httpx.MockTransport(fs),
        settings=settings,
        clock=clock,
    ) as (store, syncer):
        service = Worker(store, syncer, worker_options(settings), clock=clock)
        race = Race(store, service, clock, lake, fs, settings, syncer)
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

        lines = await r.replay_now(service_finishes)
    assert lines == ["post-1: synced by the running service, which claimed it first"]
    assert len(waits) == 1 and len(r.fs.stores) == 1  # stored once, by the service


async def test_a_failure_in_the_service_is_reported_as_a_failure(tmp_path: Path) -> None:
    async with race(tmp_path) as (r, claimed):
        image = r.lake.documents["post-1"]["mainImage"]["asset"]["_ref"]
        r.fs.refuse.add(r.lake.documents[image]["url"])

        async def service_fails(seconds: float) -> None:
            await r.service.execute(claimed)  # refused for good: failed at once

        (line,) = await r.replay_now(service_fails)
    assert line.startswith("post-1: error: failed in the running service: ")
    assert "Invalid URL" in line


async def test_a_service_that_is_still_running_it_is_waited_for_then_named(
    tmp_path: Path,
) -> None:
    async with race(tmp_path) as (r, claimed):

        async def time_passes(seconds: float) -> None:
            r.clock.advance(seconds)  # the service is alive: its heartbeat renews the lease
            assert await r.store.renew(claimed, until=r.clock() + 30)

        lines = await r.replay_now(time_passes)
    assert lines == [
        "post-1: error: the running service is still running it after 30 s "
        "(cms-sync status shows when it ends)"
    ]
