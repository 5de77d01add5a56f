"""Build settings, clients and a Syncer for tests, wired to fakes through MockTransport."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cms_sync.events import Events
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.mapping import default_mapping
from cms_sync.records import AssetRecords, MemoryAssetRecords
from cms_sync.retry import RetryPolicy, request_backoff
from cms_sync.settings import Settings
from cms_sync.sync import Syncer, open_syncer
from fakes import FakeContentLake, FakeFilestack


def service_env(sanity_url: str, filestack_url: str, **extra: str) -> dict[str, str]:
    """Environment for a ``cms-sync`` process talking to the fakes served at these URLs."""
    return {
        **os.environ,
        "SANITY_PROJECT_ID": "cmsdemo",
        "SANITY_DATASET": "production",
        "SANITY_WRITE_TOKEN": "sk-test-token",
        "SANITY_API_HOST": sanity_url,
        "FILESTACK_API_KEY": "fs-test-key",
        "FILESTACK_PROCESS_URL": f"{filestack_url}/process",
        "CMS_SYNC_RETRY_BACKOFF": "0",
        **extra,
    }


def crash_test_env(sanity_url: str, filestack_url: str, **extra: str) -> dict[str, str]:
    """For process tests that kill a service: short leases, polls and backoffs, so that
    what a crash leaves behind is recovered within seconds. A store cut off by a kill
    holds its asset for the store deadline, 2 x ``CMS_SYNC_FILESTACK_TIMEOUT``."""
    fast = {
        "CMS_SYNC_JOB_LEASE": "2",
        "CMS_SYNC_POLL_INTERVAL": "0.1",
        "CMS_SYNC_JOB_BACKOFF": "0.2",
        "CMS_SYNC_SHUTDOWN_GRACE": "5",
        "CMS_SYNC_FILESTACK_TIMEOUT": "3",
        "CMS_SYNC_AMBIGUOUS_STORE_BACKOFF": "0.5",
    }
    return service_env(sanity_url, filestack_url, **{**fast, **extra})


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "sanity_project_id": "cmsdemo",
        "sanity_dataset": "production",
        "sanity_write_token": "sk-test-token",
        "filestack_api_key": "fs-test-key",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class Clock:
    """An injected clock that moves only when a test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sleeps:
    """An injected sleep that records how long it was asked to wait, and returns at once."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def no_wait_policy(sleeps: Sleeps | None = None, attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(request_backoff(attempts=attempts), sleep=sleeps or Sleeps())


@asynccontextmanager
async def wired_syncer(
    lake: FakeContentLake,
    fs: FakeFilestack,
    *,
    settings: Settings | None = None,
    records: AssetRecords | None = None,
    retry: RetryPolicy | None = None,
    events: Events | None = None,
) -> AsyncIterator[Syncer]:
    async with open_syncer(
        settings or make_settings(),
        default_mapping(),
        records or MemoryAssetRecords(),
        retry=retry or no_wait_policy(),
        sanity_transport=httpx.MockTransport(lake),
        filestack_transport=httpx.MockTransport(fs),
        events=events,
    ) as syncer:
        yield syncer


@asynccontextmanager
async def store_and_syncer(
    database: Path,
    *,
    sanity: httpx.AsyncBaseTransport,
    filestack: httpx.AsyncBaseTransport,
    settings: Settings | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[tuple[SQLiteJobStore, Syncer]]:
    """A SQLite job store at ``database`` and a Syncer on its records, wired to fakes."""
    store = await SQLiteJobStore.open(database)
    try:
        async with open_syncer(
            settings or make_settings(),
            default_mapping(),
            store.records,
            retry=no_wait_policy(),
            sanity_transport=sanity,
            filestack_transport=filestack,
            clock=clock,
        ) as syncer:
            yield store, syncer
    finally:
        await store.close()
