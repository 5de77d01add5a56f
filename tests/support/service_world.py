"""A webhook service in this process over real sockets, with both fakes behind it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cms_sync import signature
from cms_sync.app import create_app
from cms_sync.jobs import JobState
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

    def jobs(self, state: JobState) -> int:
        """How many jobs the running service's store holds in ``state``."""
        store = self.running.service.store
        stats = self.running.call(lambda: store.stats(now=time.time()))
        return int(stats.counts[state])

    def wait_idle(self) -> None:
        worker = self.running.service.worker

        async def idle() -> None:
            await asyncio.wait_for(worker.idle.wait(), 20)

        self.running.call(idle)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` (on this thread, so a failed assert shows its cause) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def running_world(
    database: Path, *, lake: FakeContentLake | None = None, **overrides: Any
) -> Iterator[World]:
    lake = lake or FakeContentLake.from_fixtures()
    fs = FakeFilestack(app_secret="fs-secret")
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
