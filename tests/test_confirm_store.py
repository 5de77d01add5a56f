"""Contract of Filestack's notifications in the job store (every backend): a lost answer
completed from the notice, orphans and their reasons, copies we never saw."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cms_sync.cli import run_orphans
from cms_sync.filestack_notices import StoreNotice
from cms_sync.jobs import Confirmed, JobRequest, JobStore
from cms_sync.jobstore.postgres import PostgresJobStore
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.records import ANSWERED_LATE, StoredAsset
from cms_sync.settings import OperatorSettings

pytestmark = pytest.mark.anyio

A = "image-a-10x10-jpg"
KEY = "sanity/image-a-10x10-jpg.jpg"
HOLD = 60.0


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    opened: JobStore
    if request.param == "postgres":
        opened = await PostgresJobStore.open(request.getfixturevalue("postgres_url"))
    else:
        opened = await SQLiteJobStore.open(tmp_path / "jobs.db")
    yield opened
    await opened.close()


def notice(handle: str, number: int | None, event: str | None = None) -> StoreNotice:
    return StoreNotice(
        event_id=event or f"ev-{handle}",
        action="fp.upload",
        asset_id=A,
        handle=handle,
        url=f"https://cdn.filestackcontent.com/{handle}",
        storage_key=KEY,
        size=10,
        mime_type="image/jpeg",
        store_number=number,
        document_id="post-1",
        timestamp=None,
    )


def record(handle: str) -> StoredAsset:
    return StoredAsset(A, handle, f"https://cdn.filestackcontent.com/{handle}", 10, "image/jpeg")


async def begin(store: JobStore, now: float, doc: str = "post-1") -> int:
    gate = await store.records.begin_store(
        A, document_id=doc, storage_key=KEY, now=now, hold_until=now + HOLD, max_attempts=3
    )
    assert gate.granted
    return gate.number


async def lost_answer(store: JobStore, now: float, error: str = "HTTP 502") -> int:
    number = await begin(store, now)
    await store.records.end_store(A, maybe_stored=True, now=now, retry_at=now + 500, error=error)
    return number


async def test_a_lost_answer_is_completed_and_its_documents_are_due_at_once(
    store: JobStore,
) -> None:
    await store.accept("k1", [JobRequest("post-1"), JobRequest("post-2")], now=0)
    job = await store.claim(owner="w", now=0, lease=30, max_attempts=3)
    assert job is not None and job.document_id == "post-1"
    number = await lost_answer(store, now=1)
    await store.retry(job, now=1, run_after=500, error="ambiguous store")  # backing off
    refused = await store.records.begin_store(  # held; but post-2 asked for it too
        A, document_id="post-2", storage_key=KEY, now=2, hold_until=62, max_attempts=3
    )
    assert not refused.granted

    confirmed = await store.confirm_store(notice("HANDLE1", number), now=3)

    assert confirmed.outcome is Confirmed.RECORDED
    assert confirmed.queued == ("post-1", "post-2")
    assert await store.records.get(A) == record("HANDLE1")
    claimed = set()
    while (due := await store.claim(owner="w", now=4, lease=30, max_attempts=3)) is not None:
        claimed.add((due.document_id, due.delivery_id))
    assert claimed == {("post-1", "filestack:ev-HANDLE1"), ("post-2", "filestack:ev-HANDLE1")}
    # the ledger is settled: the next run of any document reuses the record
    gate = await store.records.begin_store(
        A, document_id="post-3", storage_key=KEY, now=5, hold_until=65, max_attempts=3
    )
    assert gate.record == record("HANDLE1") and not gate.granted
    assert (await store.orphans()) == ([], [])


async def test_a_notice_during_the_run_that_lost_the_answer_is_not_undone_by_its_retry(
    store: JobStore,
) -> None:
    """The notice lands after the run re-read the record but before it wrote its backoff:
    the backoff must not swallow the job the notice made due."""
    await store.accept("k1", [JobRequest("post-1")], now=0)
    job = await store.claim(owner="w", now=0, lease=30, max_attempts=3)
    assert job is not None
    number = await lost_answer(store, now=1)

    confirmed = await store.confirm_store(notice("HANDLE1", number), now=2)
    await store.retry(job, now=3, run_after=500, error="ambiguous store")

    assert confirmed.queued == ("post-1",)
    due = await store.claim(owner="w", now=4, lease=30, max_attempts=3)
    assert due is not None and due.document_id == "post-1"
    assert due.delivery_id == "filestack:ev-HANDLE1"


async def test_a_delivery_during_a_run_still_keeps_its_backoff(store: JobStore) -> None:
    await store.accept("k1", [JobRequest("post-1")], now=0)
    job = await store.claim(owner="w", now=0, lease=30, max_attempts=3)
    assert job is not None
    await store.accept("k2", [JobRequest("post-1")], now=2)  # an editor saved again
    await store.retry(job, now=3, run_after=500, error="ambiguous store")

    assert await store.claim(owner="w", now=4, lease=30, max_attempts=3) is None
    assert await store.claim(owner="w", now=501, lease=30, max_attempts=3) is not None


async def test_a_repeated_notification_does_nothing(store: JobStore) -> None:
    number = await lost_answer(store, now=0)
    assert (await store.confirm_store(notice("H1", number), now=1)).outcome is Confirmed.RECORDED
    again = await store.confirm_store(notice("H1", number), now=2)
    assert again.outcome is Confirmed.DUPLICATE
    assert (await store.confirm_store(notice("H1", number, "ev-2"), now=3)).outcome is (
        Confirmed.KNOWN
    )


async def test_a_notice_of_an_asset_never_stored_here_writes_no_record(store: JobStore) -> None:
    assert (await store.confirm_store(notice("H1", 1), now=0)).outcome is Confirmed.UNKNOWN
    assert await store.records.get(A) is None
    assert await store.claim(owner="w", now=1, lease=30, max_attempts=3) is None


async def test_a_crash_mid_store_then_a_second_store_leaves_an_orphan(store: JobStore) -> None:
    first = await begin(store, now=0)  # ... and the worker dies: no answer, no end_store
    second = await begin(store, now=HOLD + 1)  # the hold ran out
    assert (first, second) == (1, 2)
    assert await store.records.put(record("H2")) == record("H2")
    orphans, unseen = await store.orphans()
    assert orphans == [] and [(u.asset_id, u.possible) for u in unseen] == [(A, 1)]

    late = await store.confirm_store(notice("H1", first), now=HOLD + 2)
    assert late.outcome is Confirmed.ORPHAN
    assert await store.confirm_store(notice("H2", second), now=HOLD + 3) is not None
    orphans, unseen = await store.orphans()
    assert [(o.handle, o.asset_id, o.storage_key, o.store_number) for o in orphans] == [
        ("H1", A, KEY, 1)
    ]
    assert "crashed mid-store" in orphans[0].reason
    assert unseen == []  # every store is accounted for
    assert await store.records.get(A) == record("H2")  # the kept handle is untouched


async def test_an_orphan_of_an_ambiguous_answer_says_so(store: JobStore) -> None:
    first = await lost_answer(store, now=0, error="HTTP 502: bad gateway")
    await begin(store, now=600)  # after the backoff
    await store.records.put(record("H2"))
    confirmed = await store.confirm_store(notice("H1", first), now=601)
    assert confirmed.outcome is Confirmed.ORPHAN
    assert confirmed.reason == "an ambiguous answer: HTTP 502: bad gateway"
    unknown = await store.confirm_store(notice("H9", None), now=602)
    assert unknown.reason is not None and "no trace" in unknown.reason


async def test_a_store_answered_after_a_notice_keeps_the_first_handle(store: JobStore) -> None:
    first = await lost_answer(store, now=0)
    await begin(store, now=600)  # store 2 in flight ...
    await store.confirm_store(notice("H1", first), now=601)  # ... when store 1 is notified
    kept = await store.records.put(record("H2"))  # store 2's answer arrives
    assert kept == record("H1")
    orphans, _ = await store.orphans()
    assert [(o.handle, o.reason) for o in orphans] == [("H2", ANSWERED_LATE)]


async def test_a_store_that_stored_nothing_does_not_use_up_a_number(store: JobStore) -> None:
    assert await begin(store, now=0) == 1
    await store.records.end_store(A, maybe_stored=False, now=1, retry_at=1, error="HTTP 403")
    assert await begin(store, now=2) == 1


async def test_the_operator_sees_unseen_copies_then_the_orphan_that_names_one(
    tmp_path: Path,
) -> None:
    database = tmp_path / "jobs.db"
    settings = OperatorSettings(_env_file=None, cms_sync_database=database)
    store = await SQLiteJobStore.open(database)
    try:
        assert await run_listing(settings) == ["no orphans"]
        first = await begin(store, now=0)  # cut off by a crash
        await begin(store, now=HOLD + 1)
        await store.records.put(record("H2"))
        assert await run_listing(settings) == [
            f"(handle unknown)\t{A}\tkey {KEY}\t1 store(s) may have made a copy that no "
            "notification named",
            NOTHING_DELETED,
        ]
        await store.confirm_store(notice("H1", first), now=HOLD + 2)
        (line, footer) = await run_listing(settings)
        handle, asset, key, _, reason = line.split("\t")
        assert (handle, asset, key, footer) == ("H1", A, f"key {KEY}", NOTHING_DELETED)
        assert reason == "no answer recorded: the worker stopped or crashed mid-store"
    finally:
        await store.close()


NOTHING_DELETED = (
    "nothing is deleted: with one storage key per asset an orphan names the same stored "
    "object as the kept handle (see README, Orphans)"
)


async def run_listing(settings: OperatorSettings) -> list[str]:
    out = io.StringIO()
    assert await run_orphans(settings, as_json=False, out=out) == 0
    return out.getvalue().splitlines()
