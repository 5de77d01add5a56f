"""What only the shared store must do: replicas racing for the same work, NOTIFY, and a
schema that several versions of cms-sync meet. Each test has a database of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from cms_sync.errors import ConfigError, StoreUnavailable
from cms_sync.jobs import Job, JobRequest, JobState
from cms_sync.jobstore.postgres import SCHEMA_VERSION, PostgresJobStore
from cms_sync.records import StoredAsset
from cms_sync.storage import open_storage

pytestmark = pytest.mark.anyio


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresJobStore, PostgresJobStore]]:
    """Two stores on one database, each with its own pool: two replicas."""
    one = await PostgresJobStore.open(postgres_url)
    two = await PostgresJobStore.open(postgres_url)
    yield one, two
    await one.close()
    await two.close()


async def test_replicas_claiming_at_once_never_take_the_same_job(
    replicas: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    one, two = replicas
    documents = [f"post-{n}" for n in range(60)]
    await one.accept("k", [JobRequest(d) for d in documents], now=0)

    async def claim_all(store: PostgresJobStore, owner: str) -> list[Job]:
        taken = []
        while (job := await store.claim(owner=owner, now=1, lease=30, max_attempts=3)) is not None:
            taken.append(job)
        return taken

    claims = await asyncio.gather(*(claim_all(s, f"r{n}") for n, s in enumerate([one, two] * 3)))

    taken = [job.document_id for jobs in claims for job in jobs]
    assert sorted(taken) == sorted(documents)  # each once, none twice
    assert sum(1 for jobs in claims if jobs) > 1  # and the work was shared


async def test_the_same_delivery_to_both_replicas_queues_one_job(
    replicas: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    one, two = replicas
    results = await asyncio.gather(
        *(
            store.accept(f"key-{n}", [JobRequest("post-1")], now=0)
            for n in range(20)
            for store in (one, two)
        )
    )
    same_key = await asyncio.gather(
        one.accept("dup", [JobRequest("post-2")], now=0),
        two.accept("dup", [JobRequest("post-2")], now=0),
    )

    assert sum(len(r.queued) for r in results) == 1  # the rest coalesced into it
    assert sorted(r.duplicate for r in same_key) == [False, True]
    stats = await one.stats(now=1)
    assert stats.counts[JobState.PENDING] == 2


async def test_replicas_racing_for_one_asset_store_it_once(
    replicas: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    one, two = replicas

    async def begin(store: PostgresJobStore, doc: str) -> bool:
        gate = await store.records.begin_store(
            "image-a", document_id=doc, storage_key="k", now=0, hold_until=60, max_attempts=3
        )
        return gate.granted

    grants = await asyncio.gather(*(begin(s, f"p{n}") for n in range(10) for s in (one, two)))
    assert grants.count(True) == 1


async def test_a_record_written_by_one_replica_is_what_the_other_gets(
    replicas: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    one, two = replicas
    gate = await one.records.begin_store(
        "image-a", document_id="p", storage_key="k", now=0, hold_until=60, max_attempts=3
    )
    assert gate.granted
    record = StoredAsset("image-a", "H", "https://cdn/H", 1, "image/png")
    await one.records.put(record)
    # Long after any hold or backoff: the record, never a second store.
    later = await two.records.begin_store(
        "image-a", document_id="q", storage_key="k", now=10_000, hold_until=10_060, max_attempts=3
    )
    assert later.record == record and not later.granted


async def test_a_job_queued_on_one_replica_wakes_the_other(
    replicas: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    one, two = replicas
    woken = asyncio.Event()
    two.add_waker(woken.set)
    await asyncio.sleep(0)  # let the listener start
    await _listening(two)
    woken.clear()

    await one.accept("k", [JobRequest("post-1")], now=0)
    async with asyncio.timeout(5):
        await woken.wait()

    woken.clear()  # deliveries written together notify too
    await asyncio.gather(*(one.accept(f"k{n}", [JobRequest(f"post-{n}")], now=0) for n in (2, 3)))
    async with asyncio.timeout(5):
        await woken.wait()


async def _listening(store: PostgresJobStore) -> None:
    """Wait until ``store``'s listener is subscribed (it wakes once when it is)."""
    ready = asyncio.Event()
    store.add_waker(ready.set)
    async with asyncio.timeout(5):
        await ready.wait()


async def test_a_newer_schema_refuses_older_code_in_one_line(postgres_url: str) -> None:
    store = await PostgresJobStore.open(postgres_url)
    await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE cms_sync_schema SET version = %s", (SCHEMA_VERSION + 1,))

    with pytest.raises(ConfigError) as refused:
        async with open_storage(postgres_url):
            pass
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema {SCHEMA_VERSION + 1}, newer than this cms-sync knows" in message


async def test_a_schema_1_database_is_migrated_and_keeps_its_jobs(postgres_url: str) -> None:
    store = await PostgresJobStore.open(postgres_url)
    await store.accept("k1", [JobRequest("post-1", "update", 5.0)], now=0)
    await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as version 1 left it
        conn.execute("ALTER TABLE jobs DROP COLUMN delivery_id")
        conn.execute("DROP TABLE job_history")
        conn.execute("UPDATE cms_sync_schema SET version = 1")

    one, two = await asyncio.gather(  # two replicas upgrading at once
        PostgresJobStore.open(postgres_url), PostgresJobStore.open(postgres_url)
    )
    try:
        job = await one.claim(owner="w", now=1, lease=30, max_attempts=3)
        assert job is not None
        assert (job.document_id, job.not_before, job.delivery_id) == ("post-1", 5.0, None)
        await two.accept("k2", [JobRequest("post-2")], now=1)
        later = await two.claim(owner="w", now=2, lease=30, max_attempts=3)
        assert later is not None and later.delivery_id == "k2"
        assert await two.finish(later, now=3)
        assert [run.job_id for run in await one.history("post-2")] == [later.id]
    finally:
        await one.close()
        await two.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT version FROM cms_sync_schema").fetchone()
        assert row == (SCHEMA_VERSION,)


async def test_operator_commands_do_not_create_the_tables(postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="no cms-sync tables"):
        async with open_storage(postgres_url, create=False):
            pass
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'").fetchone()
    assert tables == (0,)


async def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    url = "postgresql://cms:hunter2@127.0.0.1:9/cms?connect_timeout=2"
    with pytest.raises(ConfigError) as refused:
        async with open_storage(url):
            pass
    message = str(refused.value)
    assert message.startswith("CMS_SYNC_DATABASE: cannot open postgresql://cms@127.0.0.1:9/cms")
    assert "hunter2" not in message and "\n" not in message


async def test_a_database_that_goes_away_is_store_unavailable(postgres_url: str) -> None:
    async with open_storage(postgres_url) as storage:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        # The pool's connections are dead; a failure is StoreUnavailable (503), and the
        # pool replaces them, so the next call works again.
        for _ in range(20):
            try:
                await storage.jobs.accept("k", [JobRequest("post-1")], now=0)
                break
            except StoreUnavailable:
                continue
        assert (await storage.jobs.latest_job("post-1")) is not None
