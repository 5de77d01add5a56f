"""Contract of the stored-asset records and the ledger of unanswered stores (every backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cms_sync.jobs import JobStore
from cms_sync.jobstore.postgres import PostgresJobStore
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.records import AssetRecords, MemoryAssetRecords, StoredAsset

pytestmark = pytest.mark.anyio

CAP = 3
HOLD = 60.0
A = "image-a-10x10-jpg"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def records(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AssetRecords]:
    if request.param == "memory":
        yield MemoryAssetRecords()
        return
    store: JobStore
    if request.param == "postgres":
        store = await PostgresJobStore.open(request.getfixturevalue("postgres_url"))
    else:
        store = await SQLiteJobStore.open(tmp_path / "jobs.db")
    yield store.records
    await store.close()


async def begin(records: AssetRecords, now: float, doc: str = "product-1") -> bool:
    gate = await records.begin_store(
        A,
        document_id=doc,
        storage_key="sanity/a.jpg",
        now=now,
        hold_until=now + HOLD,
        max_attempts=CAP,
    )
    return gate.granted


async def test_a_store_holds_the_asset_until_it_is_answered(records: AssetRecords) -> None:
    assert await begin(records, now=0)
    assert not await begin(records, now=1, doc="product-2")  # another document, same asset
    assert not await begin(records, now=HOLD - 1)


async def test_a_crash_mid_store_counts_once_the_hold_runs_out(records: AssetRecords) -> None:
    assert await begin(records, now=0)  # ... and the process dies: no end_store
    gate = await records.begin_store(
        A, document_id="p", storage_key="k", now=HOLD + 1, hold_until=HOLD + 61, max_attempts=CAP
    )
    assert gate.granted and gate.attempts == 2


async def test_an_unanswered_store_backs_off_then_counts(records: AssetRecords) -> None:
    assert await begin(records, now=0)
    await records.end_store(A, maybe_stored=True, now=1, retry_at=30, error="HTTP 502")
    assert not await begin(records, now=29)
    gate = await records.begin_store(
        A, document_id="p", storage_key="k", now=30, hold_until=90, max_attempts=CAP
    )
    assert gate.granted and gate.attempts == 2


async def test_a_store_that_stored_nothing_is_not_counted(records: AssetRecords) -> None:
    for n in range(CAP + 2):  # never sent, refused, or 429: any number of times
        assert await begin(records, now=n)
        await records.end_store(A, maybe_stored=False, now=n, retry_at=10_000, error="refused")
    gate = await records.begin_store(
        A, document_id="p", storage_key="k", now=100, hold_until=160, max_attempts=CAP
    )
    assert gate.granted and gate.attempts == 1


async def test_past_the_cap_it_is_refused_with_what_an_operator_needs(
    records: AssetRecords,
) -> None:
    for n in range(CAP):
        assert await begin(records, now=n * 100)
        await records.end_store(A, maybe_stored=True, now=n * 100, retry_at=n * 100 + 1, error="t")
    gate = await records.begin_store(
        A, document_id="p", storage_key="k", now=10_000, hold_until=10_060, max_attempts=CAP
    )
    assert not gate.granted
    assert (gate.attempts, gate.storage_key, gate.last_error) == (CAP, "sanity/a.jpg", "t")


async def test_a_recorded_asset_is_handed_out_instead_of_a_store(records: AssetRecords) -> None:
    assert await begin(records, now=0)
    record = StoredAsset(A, "h1", "https://cdn/h1", 10, "image/jpeg")
    await records.put(record)
    gate = await records.begin_store(
        A, document_id="p", storage_key="k", now=1, hold_until=61, max_attempts=CAP
    )
    assert gate.record == record and not gate.granted
    assert await records.get(A) == record
