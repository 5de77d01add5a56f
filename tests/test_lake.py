"""Batched reads and writes against the Content Lake emulator: one query for many
documents, one transaction for many patches, and a conflict that costs only its own
document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from cms_sync.errors import RevisionConflict
from cms_sync.lake import Lake
from cms_sync.mapping import default_mapping
from cms_sync.sanity import SanityClient
from fakes import FakeContentLake, FakeFilestack
from scenarios import catalogue, converged
from wiring import make_settings, no_wait_policy, wired_syncer

pytestmark = pytest.mark.anyio


class Held(httpx.AsyncBaseTransport):
    """The emulator behind a gate: requests of one kind wait while ``gate`` is clear."""

    def __init__(self, lake: FakeContentLake, kind: str) -> None:
        self.lake, self.kind = lake, kind
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()
        #: Answers a request instead of the emulator when it returns a response.
        self.intercept: Callable[[httpx.Request], httpx.Response | None] = lambda _: None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if f"/data/{self.kind}/" in request.url.path:
            self.arrived.set()
            await self.gate.wait()
        await request.aread()
        return self.intercept(request) or self.lake(request)


@asynccontextmanager
async def lake_over(transport: Held, **options: Any) -> AsyncIterator[Lake]:
    async with httpx.AsyncClient(transport=transport, base_url="http://lake/v2025-02-19") as http:
        http.headers["authorization"] = f"Bearer {transport.lake.token}"
        client = SanityClient(http, dataset="production", retry=no_wait_policy())
        yield Lake(client, default_mapping(), **options)


def patch(lake: FakeContentLake, doc_id: str, title: str) -> dict[str, Any]:
    rev = lake.documents[doc_id]["_rev"]
    return {"patch": {"id": doc_id, "ifRevisionID": rev, "set": {"title": title}}}


async def hold_first(held: Held, call: Any) -> asyncio.Task[Any]:
    held.gate.clear()
    first = asyncio.create_task(call)
    await held.arrived.wait()
    return first


async def queued_behind_a_held_patch(
    held: Held, batched: Lake, lake: FakeContentLake, numbers: tuple[int, ...]
) -> list[asyncio.Task[None]]:
    """product-0's patch held at the lake; then patches of ``product-{n}`` queued."""
    first = await hold_first(held, batched.patch(patch(lake, "product-0", "zero")))
    rest = [
        asyncio.create_task(batched.patch(patch(lake, f"product-{n}", f"p{n}"))) for n in numbers
    ]
    await asyncio.sleep(0)
    return [first, *rest]


async def test_reads_queued_behind_a_busy_read_go_as_one_query() -> None:
    lake = FakeContentLake(documents={d["_id"]: d for d in catalogue(6, 0, 3)})
    held = Held(lake, "query")
    async with lake_over(held, read_senders=1) as batched:
        first = await hold_first(held, batched.fetch("product-0"))
        wanted = ["product-3", "nobody", "product-1", "product-3"]
        rest = [asyncio.create_task(batched.fetch(i)) for i in wanted]
        await asyncio.sleep(0)
        held.gate.set()
        answers = [await first, *[await t for t in rest]]
    assert [a and a["_id"] for a in answers] == [
        "product-0",
        *[None if i == "nobody" else i for i in wanted],
    ]
    assert len(lake.queries) == 2
    ref = lake.documents["product-3"]["mainImage"]["asset"]["_ref"]
    assert answers[1] is not None and answers[1]["mainImage"]["asset"]["_id"] == ref


async def test_patches_queued_behind_a_busy_write_go_as_one_transaction() -> None:
    lake = FakeContentLake(documents={d["_id"]: d for d in catalogue(4, 0, 2)})
    held = Held(lake, "mutate")
    async with lake_over(held, write_senders=1) as batched:
        calls = await queued_behind_a_held_patch(held, batched, lake, (1, 2, 3))
        held.gate.set()
        await asyncio.gather(*calls)
    batches = [[m["patch"]["id"] for m in request] for request in lake.commits]
    assert batches == [["product-0"], ["product-1", "product-2", "product-3"]]
    revisions = {m["patch"]["id"]: m["patch"]["ifRevisionID"] for m in lake.commits[1]}
    assert revisions == {f"product-{n}": f"r{n}" for n in (1, 2, 3)}  # each its own
    assert [lake.documents[f"product-{n}"]["title"] for n in (1, 2, 3)] == ["p1", "p2", "p3"]


async def test_a_conflict_fails_its_own_patch_and_the_others_are_sent_again() -> None:
    lake = FakeContentLake(documents={d["_id"]: d for d in catalogue(4, 0, 2)})
    held = Held(lake, "mutate")
    async with lake_over(held, write_senders=1) as batched:
        calls = await queued_behind_a_held_patch(held, batched, lake, (1, 2, 3))
        lake.edit("product-2", lambda doc: doc.update(title="an editor's"))
        held.gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[:2] == [None, None] and outcomes[3] is None
    assert isinstance(outcomes[2], RevisionConflict) and outcomes[2].index == 1
    sent = [[m["patch"]["id"] for m in request] for request in lake.mutations]
    assert sent == [
        ["product-0"],
        ["product-1", "product-2", "product-3"],  # 409: nothing applied
        ["product-1", "product-3"],
    ]
    titles = [lake.documents[f"product-{n}"]["title"] for n in (1, 2, 3)]
    assert titles == ["p1", "an editor's", "p3"]


async def test_a_conflict_that_names_no_patch_sends_each_alone() -> None:
    lake = FakeContentLake(documents={d["_id"]: d for d in catalogue(3, 0, 2)})
    held = Held(lake, "mutate")
    body = {"error": {"type": "documentRevisionIDDoesNotMatchError", "description": "no"}}
    unnamed = []

    def no_index_for_a_batch(request: httpx.Request) -> httpx.Response | None:
        if len(json.loads(request.content)["mutations"]) < 2:
            return None
        unnamed.append(request)
        return httpx.Response(409, json=body)

    held.intercept = no_index_for_a_batch
    async with lake_over(held, write_senders=1) as batched:
        calls = await queued_behind_a_held_patch(held, batched, lake, (1, 2))
        lake.edit("product-1", lambda doc: doc.update(title="an editor's"))
        held.gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert len(unnamed) == 1
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], RevisionConflict)
    sent = [[m["patch"]["id"] for m in request] for request in lake.mutations]
    assert sent == [["product-0"], ["product-1"], ["product-2"]]
    assert lake.documents["product-2"]["title"] == "p2"


async def test_concurrent_syncs_share_queries_and_transactions_and_all_converge() -> None:
    docs = catalogue(12, 8, 6)
    lake = FakeContentLake(documents={d["_id"]: d for d in docs})
    ids = [d["_id"] for d in docs if d["_type"] in ("product", "post")]
    fs = FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        reports = await asyncio.gather(*(syncer.sync(i) for i in ids))
    assert all(r.ok and r.patched for r in reports)
    assert converged(lake.documents, ids)
    patched = [m["patch"]["id"] for request in lake.commits for m in request]
    assert sorted(patched) == sorted(ids)  # each document patched once
    assert len(lake.commits) < len(ids) and len(lake.queries) < len(ids)


async def test_batch_size_one_sends_every_document_alone() -> None:
    docs = catalogue(4, 2, 2)
    lake = FakeContentLake(documents={d["_id"]: d for d in docs})
    ids = [d["_id"] for d in docs if d["_type"] in ("product", "post")]
    settings = make_settings(cms_sync_batch_size=1)
    async with wired_syncer(lake, FakeFilestack(), settings=settings) as syncer:
        await asyncio.gather(*(syncer.sync(i) for i in ids))
    assert converged(lake.documents, ids)
    assert len(lake.commits) == len(ids) == len(lake.queries)
