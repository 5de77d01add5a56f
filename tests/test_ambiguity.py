"""Stores whose answer is lost: one storage key per asset, a durable per-asset backoff, a cap.

Filestack may store the file and still answer with a gateway's 502, a 200 without a
handle, a 200 that is not JSON, or nothing before the timeout. These tests run the worker,
the SQLite job store and both fakes on an injected clock, so a window of such answers and
the backoffs after it take no real time.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cms_sync.jobs import JobRequest, JobSource
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.settings import Settings
from cms_sync.worker import Worker, worker_options
from fakes import FakeContentLake, FakeFilestack
from scenarios import catalogue, converged
from wiring import Clock, make_settings, store_and_syncer

pytestmark = pytest.mark.anyio

START = 1_800_000_000.0


def lost_answers() -> Callable[[httpx.Response], httpx.Response]:
    """Each store is made, then its answer is lost, in turn, in the four ways seen."""
    kinds = itertools.cycle(["502", "no handle", "not json", "timeout"])

    def lose(answer: httpx.Response) -> httpx.Response:
        kind = next(kinds)
        if kind == "502":
            return httpx.Response(502, json={"statusCode": 502, "error": "Bad Gateway"})
        if kind == "no handle":
            return httpx.Response(200, json={"url": "https://cdn.filestackcontent.com/x"})
        if kind == "not json":
            return httpx.Response(200, text="<html>upstream hiccup</html>")
        raise httpx.ReadTimeout("no answer in time")

    return lose


@dataclass
class Rig:
    lake: FakeContentLake
    fs: FakeFilestack
    store: SQLiteJobStore
    worker: Worker
    clock: Clock
    doc_ids: list[str]

    async def deliver(self, doc_ids: list[str]) -> None:
        events = [JobRequest(d, "update") for d in doc_ids]
        await self.store.accept(None, events, now=self.clock())

    async def run_until_quiet(self, *, limit: float) -> None:
        """Run every due job, then jump the clock to the next due one, until none is left."""
        while self.clock() < limit:
            await self.worker.drain()
            due = await self.store.next_due()
            if due is None:
                return
            self.clock.now = max(due, self.clock() + 0.001)


@asynccontextmanager
async def rig(tmp_path: Path, settings: Settings) -> AsyncIterator[Rig]:
    docs = catalogue(products=7, posts=10, shared=4)
    lake = FakeContentLake(documents={d["_id"]: d for d in docs})
    fs, clock = FakeFilestack(), Clock(START)
    async with store_and_syncer(
        tmp_path / "jobs.db",
        sanity=httpx.MockTransport(lake),
        filestack=httpx.MockTransport(fs),
        settings=settings,
        clock=clock,
    ) as (store, syncer):
        worker = Worker(store, syncer, worker_options(settings), clock=clock)
        doc_ids = [d["_id"] for d in docs if d["_type"] in ("product", "post")]
        yield Rig(lake, fs, store, worker, clock, doc_ids)


def stores_per_asset(fs: FakeFilestack) -> Counter[str]:
    return Counter(body["upload_tags"]["sanity_asset_id"] for body in fs.stores)


async def test_a_ten_second_window_of_lost_answers_costs_at_most_two_extra_stores(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, make_settings()) as r:
        assets = {s["asset"]["_ref"] for d in r.lake.documents.values() for s in _slots(d)}
        assert len(assets) == 21
        r.fs.lose_answer = lost_answers()
        await r.deliver(r.doc_ids)
        # The window: every store is made and its answer lost; meanwhile an editor
        # re-publishes every document each half second (and Sanity delivers each save).
        while r.clock() < START + 10:
            await r.worker.drain()
            r.clock.advance(0.5)
            await r.deliver(r.doc_ids)
        r.fs.lose_answer = None
        await r.run_until_quiet(limit=START + 3 * 3600)

        per_asset = stores_per_asset(r.fs)
        assert set(per_asset) == assets
        assert max(per_asset.values()) <= 3, per_asset  # the one that counts + at most 2 extra
        # The same storage key each time: a repeated store overwrote one object.
        assert len(r.fs.objects) == len(assets)
        assert converged(r.lake.documents, r.doc_ids)
        assert await r.store.failures() == []
        most = max(per_asset.values())
        print(f"\n{len(r.fs.stores)} stores for {len(assets)} assets, at most {most} each")


async def test_past_the_cap_the_slot_fails_with_where_to_look_and_replay_resets_it(
    tmp_path: Path,
) -> None:
    settings = make_settings(cms_sync_ambiguous_store_max=2, cms_sync_ambiguous_store_backoff=5)
    async with rig(tmp_path, settings) as r:
        r.fs.lose_answer = lambda _answer: httpx.Response(502, text="Bad Gateway")
        await r.deliver(["post-0"])
        await r.run_until_quiet(limit=START + 3600)

        asset_id = r.lake.documents["post-0"]["mainImage"]["asset"]["_ref"]
        assert stores_per_asset(r.fs) == {asset_id: 2}
        assert (await r.store.stats(now=r.clock())).unanswered_stores == 1
        (failure,) = await r.store.failures()
        assert failure.document_id == "post-0"
        assert "gave up after 2 unanswered stores (last: Filestack: HTTP 502" in failure.last_error
        assert f"storage key 'sanity/{asset_id}.jpg'" in failure.last_error
        assert f"upload tag sanity_asset_id={asset_id}" in failure.last_error

        # A new delivery does not lift the cap: only an operator's replay does.
        await r.deliver(["post-0"])
        await r.run_until_quiet(limit=r.clock() + 3600)
        assert stores_per_asset(r.fs) == {asset_id: 2}

        r.fs.lose_answer = None
        await r.store.enqueue([JobRequest("post-0", source=JobSource.REPLAY)], now=r.clock())
        await r.run_until_quiet(limit=r.clock() + 3600)
        assert stores_per_asset(r.fs) == {asset_id: 3}
        assert converged(r.lake.documents, ["post-0"])
        assert await r.store.failures() == []
        assert (await r.store.stats(now=r.clock())).unanswered_stores == 0


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(429, text="slow down"),
        httpx.Response(400, text="Invalid URL"),
        httpx.Response(403, text="storage provider error: Invalid Application (idx 0)"),
    ],
    ids=["429", "400", "403"],
)
async def test_a_store_that_stored_nothing_is_not_held_against_the_asset(
    tmp_path: Path, answer: httpx.Response
) -> None:
    """Refusals are not ambiguous: they neither back the asset off nor count towards the cap."""
    async with rig(tmp_path, make_settings(cms_sync_ambiguous_store_max=1)) as r:
        r.fs.scripted = [lambda _request: answer] * 3
        for _ in range(4):  # three refusals, each replayed at once, then the store goes through
            await r.store.enqueue([JobRequest("post-0", source=JobSource.REPLAY)], now=r.clock())
            await r.run_until_quiet(limit=r.clock() + 6 * 3600)
        assert r.fs.scripted == []
        assert len(r.fs.stores) == 1 and converged(r.lake.documents, ["post-0"])
        assert await r.store.failures() == []


def _slots(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("_type") not in ("product", "post"):
        return []
    return [doc["mainImage"], *doc.get("gallery", [])]
