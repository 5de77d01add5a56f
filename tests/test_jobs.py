"""Contract tests of the job store; every implementation must pass them, unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cms_sync.jobs import (
    HISTORY_PER_DOCUMENT,
    FailedJob,
    Job,
    JobRequest,
    JobSource,
    JobState,
    JobStore,
    RunOutcome,
)
from cms_sync.jobstore.postgres import PostgresJobStore
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.records import StoredAsset

pytestmark = pytest.mark.anyio

LEASE, MAX = 30.0, 3
Opener = Callable[[], Awaitable[JobStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")

        async def open_postgres() -> JobStore:
            return await PostgresJobStore.open(url)

        return open_postgres

    async def open_sqlite() -> JobStore:
        return await SQLiteJobStore.open(tmp_path / "jobs.db")

    return open_sqlite


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[JobStore]:
    store = await opener()
    yield store
    await store.close()


def ev(doc_id: str, tt: float | None = None, op: str | None = "update") -> JobRequest:
    return JobRequest(doc_id, op, tt)


def replays(failures: list[FailedJob]) -> list[JobRequest]:
    return [JobRequest(f.document_id, source=JobSource.REPLAY) for f in failures]


async def claim(store: JobStore, now: float = 0.0, owner: str = "w1", **kw: object) -> Job | None:
    return await store.claim(owner=owner, now=now, lease=LEASE, max_attempts=MAX, **kw)  # type: ignore[arg-type]


async def test_accept_queues_and_a_repeated_key_writes_nothing(store: JobStore) -> None:
    first = await store.accept("key-1", [ev("a"), ev("b")], now=0)
    assert first.queued == ("a", "b") and not first.duplicate
    again = await store.accept("key-1", [ev("c")], now=1)
    assert again.duplicate and again.queued == ()
    assert (await store.stats(now=1)).counts[JobState.PENDING] == 2


async def test_deliveries_arriving_together_are_each_answered_right(store: JobStore) -> None:
    # Written together (a group commit): repeated keys, documents shared between
    # deliveries, a multi-document delivery and one without a key, all at once.
    await store.accept("seen", [ev("z")], now=0)
    deliveries = [
        ("k1", [ev("a")]),
        ("k2", [ev("a", tt=5.0)]),
        ("k1", [ev("a")]),  # Sanity retrying while the first try is being written
        ("seen", [ev("b")]),
        ("k3", [ev("b"), ev("c"), ev("b", tt=9.0)]),
        (None, [ev("c")]),
        ("k4", [ev("z")]),
    ]
    results = await asyncio.gather(
        *(store.accept(key, requests, now=1) for key, requests in deliveries)
    )

    assert [r.duplicate for r in results] == [False, False, True, True, False, False, False]
    queued = [doc for r in results for doc in r.queued]
    assert sorted(queued) == ["a", "b", "c"]  # each new document queued once
    assert results[6].coalesced == ("z",)
    for r, (_, requests) in zip(results, deliveries, strict=True):
        if not r.duplicate:
            assert set(r.queued) | set(r.coalesced) == {e.document_id for e in requests}
    jobs = {}
    while (job := await claim(store, now=2)) is not None:
        jobs[job.document_id] = job
    assert set(jobs) == {"a", "b", "c", "z"}
    assert (jobs["a"].not_before, jobs["b"].not_before) == (5.0, 9.0)
    # Each job names the latest delivery (with a key) that asked for it.
    assert {d: j.delivery_id for d, j in jobs.items()} == {
        "a": "k2",
        "b": "k3",
        "c": "k3",  # the delivery without a key does not hide the one with
        "z": "k4",
    }


async def test_a_job_keeps_who_asked_for_it(store: JobStore) -> None:
    await store.accept("k", [ev("a"), ev("b")], now=0)
    await store.enqueue([JobRequest("b", source=JobSource.REPLAY)], now=0)  # coalesces
    await store.enqueue([JobRequest("c", source=JobSource.REPLAY)], now=0)
    sources = {}
    while (job := await claim(store, now=1)) is not None:
        sources[job.document_id] = job.source
    assert sources == {
        "a": JobSource.WEBHOOK,
        "b": JobSource.REPLAY,  # an operator's say-so made it theirs
        "c": JobSource.REPLAY,
    }


async def test_a_job_names_the_latest_delivery_that_asked_for_it(store: JobStore) -> None:
    await store.accept("k1", [ev("a"), ev("b"), ev("c")], now=0)
    await store.accept("k2", [ev("a")], now=1)  # coalesces: the job is k2's now
    await store.accept(None, [ev("a")], now=1)  # no key: k2 stays
    await store.begin_backfill("all:post", total=None, now=1)
    await store.advance_backfill("all:post", backfilled("b", "d"), cursor="d", now=2)
    await store.enqueue([JobRequest("c", source=JobSource.REPLAY)], now=2)  # an operator's
    named = {}
    while (job := await claim(store, now=3)) is not None:
        named[job.document_id] = job.delivery_id
    assert named == {"a": "k2", "b": "k1", "c": None, "d": None}


async def test_deliveries_for_a_pending_document_coalesce(store: JobStore) -> None:
    await store.accept("k1", [ev("a", tt=100.0)], now=0)
    second = await store.accept("k2", [ev("a", tt=90.0)], now=1)
    third = await store.accept(None, [ev("a", tt=120.0)], now=2)
    assert second.coalesced == ("a",) and third.coalesced == ("a",)
    job = await claim(store, now=3)
    assert job is not None and job.not_before == 120.0
    assert await claim(store, now=3) is None


async def test_at_most_one_running_job_per_document(store: JobStore) -> None:
    await store.accept("k1", [ev("a")], now=0)
    running = await claim(store)
    await store.accept("k2", [ev("a")], now=1)  # a new pending job while the first runs
    assert running is not None
    assert await claim(store, now=2, owner="w2") is None
    assert await store.finish(running, now=3)
    follow_up = await claim(store, now=4, owner="w2")
    assert follow_up is not None and follow_up.id != running.id


async def test_expired_lease_makes_the_job_runnable_and_the_old_owner_loses_it(
    store: JobStore,
) -> None:
    await store.accept("k", [ev("a")], now=0)
    crashed = await claim(store, now=0, owner="dead")
    assert crashed is not None
    assert await claim(store, now=LEASE - 1, owner="w2") is None
    retaken = await claim(store, now=LEASE + 1, owner="w2")
    assert retaken is not None and (retaken.id, retaken.attempts) == (crashed.id, 2)
    assert not await store.finish(crashed, now=LEASE + 2)  # the lease is gone
    assert await store.finish(retaken, now=LEASE + 3)


async def test_renewed_lease_is_kept(store: JobStore) -> None:
    await store.accept("k", [ev("a")], now=0)
    job = await claim(store, now=0)
    assert job is not None and await store.renew(job, until=LEASE * 3)
    assert await claim(store, now=LEASE * 2, owner="w2") is None


async def test_a_job_whose_every_run_died_ends_failed(store: JobStore) -> None:
    await store.accept("k", [ev("a")], now=0)
    now = 0.0
    for _ in range(MAX):
        assert await claim(store, now=now, owner=f"w{now}") is not None
        now += LEASE + 1
    assert await claim(store, now=now) is None
    (failure,) = await store.failures()
    assert failure.document_id == "a" and failure.attempts == MAX
    assert "never finished" in failure.last_error


async def test_retry_waits_until_run_after(store: JobStore) -> None:
    await store.accept("k", [ev("a")], now=0)
    job = await claim(store)
    assert job is not None
    assert await store.retry(job, now=1, run_after=60, error="Filestack: HTTP 503")
    assert await claim(store, now=59) is None
    again = await claim(store, now=60)
    assert again is not None and again.attempts == 2 and again.last_error == "Filestack: HTTP 503"


async def test_a_retry_folds_into_a_newer_pending_job_which_keeps_the_backoff(
    store: JobStore,
) -> None:
    await store.accept("k1", [ev("a")], now=0)
    job = await claim(store)
    await store.accept("k2", [ev("a")], now=1)
    assert job is not None and await store.retry(job, now=2, run_after=500, error="x")
    assert (await store.stats(now=3)).counts == {
        JobState.PENDING: 1,
        JobState.RUNNING: 0,
        JobState.DONE: 0,
        JobState.FAILED: 0,
    }
    assert await claim(store, now=499) is None
    newer = await claim(store, now=500)
    assert newer is not None and newer.attempts == 2  # the retried attempt still counts


async def test_a_delivery_does_not_cut_a_backoff_short(store: JobStore) -> None:
    await store.accept("k1", [ev("a")], now=0)
    job = await claim(store)
    assert job is not None and await store.retry(job, now=1, run_after=100, error="x")
    for n in range(10):  # an editor saving again and again
        assert (await store.accept(f"save-{n}", [ev("a")], now=2 + n)).coalesced == ("a",)
    assert await claim(store, now=50) is None
    assert await claim(store, now=100) is not None


async def test_replay_makes_a_backing_off_job_due_now(store: JobStore) -> None:
    await store.accept("k1", [ev("a")], now=0)
    job = await claim(store)
    assert job is not None and await store.retry(job, now=1, run_after=100, error="x")
    await store.enqueue([JobRequest("a", source=JobSource.REPLAY)], now=2)
    again = await claim(store, now=2)
    assert again is not None and again.attempts == 1


async def test_read_retries_are_counted(store: JobStore) -> None:
    await store.accept("k", [ev("a", tt=5.0)], now=0)
    job = await claim(store)
    assert job is not None
    await store.retry(job, now=1, run_after=1, error="stale", read_retry=True)
    again = await claim(store, now=1)
    assert again is not None and again.read_retries == 1


async def test_release_gives_the_attempt_back(store: JobStore) -> None:
    await store.accept("k", [ev("a")], now=0)
    job = await claim(store)
    assert job is not None and await store.release(job, now=1)
    again = await claim(store, now=1)
    assert again is not None and again.attempts == 1


async def test_failures_replay_and_recovery(store: JobStore) -> None:
    await store.accept("k", [ev("a"), ev("b")], now=0)
    for now in (1, 2):
        job = await claim(store, now=now)
        assert job is not None
        await store.fail(job, now=now, error=f"refused {job.document_id}")
    failures = await store.failures()
    assert [(f.document_id, f.last_error) for f in failures] == [
        ("b", "refused b"),
        ("a", "refused a"),
    ]

    replayed = await store.enqueue(replays(await store.failures()), now=3)
    assert set(replayed.queued) == {"a", "b"}
    assert await store.failures() == []
    job = await claim(store, now=4)
    assert job is not None and job.attempts == 1
    await store.finish(job, now=5)
    stats = await store.stats(now=5)
    assert stats.counts[JobState.DONE] == 1 and stats.counts[JobState.PENDING] == 1


async def test_a_later_success_clears_the_documents_failure(store: JobStore) -> None:
    await store.accept("k1", [ev("a")], now=0)
    job = await claim(store)
    assert job is not None
    await store.fail(job, now=1, error="refused")
    await store.accept("k2", [ev("a")], now=2)  # the editor fixed it and published
    fixed = await claim(store, now=3)
    assert fixed is not None and await store.finish(fixed, now=4)
    assert await store.failures() == []
    assert (await store.stats(now=4)).counts == {
        JobState.PENDING: 0,
        JobState.RUNNING: 0,
        JobState.DONE: 1,
        JobState.FAILED: 0,
    }


async def test_stats_and_next_due(store: JobStore) -> None:
    assert await store.next_due() is None
    await store.accept("k", [ev("a")], now=10)
    await store.accept("k2", [ev("b")], now=20)
    await store.records.put(StoredAsset("image-1", "h", "u", 1, "image/png"))
    stats = await store.stats(now=25)
    assert stats.oldest_pending_age == 15 and stats.stored_assets == 1
    assert await store.next_due() == 10


async def test_stats_count_jobs_by_state_and_source(store: JobStore) -> None:
    await store.accept("k", [ev("a"), ev("b")], now=0)
    await store.enqueue([JobRequest("c", source=JobSource.REPLAY)], now=1)
    job = await claim(store, now=2, document_id="a")
    assert job is not None and await store.finish(job, now=3)
    stats = await store.stats(now=4)
    assert stats.by_source == {
        (JobState.DONE, JobSource.WEBHOOK): 1,
        (JobState.PENDING, JobSource.WEBHOOK): 1,
        (JobState.PENDING, JobSource.REPLAY): 1,
    }
    assert stats.counts[JobState.PENDING] == 2 and stats.counts[JobState.DONE] == 1


async def test_claim_of_one_document(store: JobStore) -> None:
    await store.accept("k", [ev("a"), ev("b")], now=0)
    job = await claim(store, document_id="b")
    assert job is not None and job.document_id == "b"


async def test_everything_survives_reopening(opener: Opener) -> None:
    first = await opener()
    await first.accept("k", [ev("a", tt=7.0, op="create")], now=1)
    await first.records.put(StoredAsset("image-1", "H", "https://cdn/H", 10, "image/png"))
    await first.close()
    second = await opener()
    try:
        assert (await second.accept("k", [ev("z")], now=2)).duplicate
        job = await claim(second, now=3)
        assert job is not None and (job.document_id, job.operation, job.not_before) == (
            "a",
            "create",
            7.0,
        )
        assert await second.records.get("image-1") == StoredAsset(
            "image-1", "H", "https://cdn/H", 10, "image/png"
        )
        assert await second.records.get("image-2") is None
    finally:
        await second.close()


async def test_prune_forgets_old_delivery_keys(store: JobStore) -> None:
    await store.accept("old", [ev("a")], now=0)
    await store.accept("new", [ev("b")], now=100)
    await store.prune(before=50)
    assert not (await store.accept("old", [ev("a")], now=101)).duplicate
    assert (await store.accept("new", [ev("b")], now=101)).duplicate


def backfilled(*ids: str) -> list[JobRequest]:
    return [JobRequest(i, source=JobSource.BACKFILL) for i in ids]


async def test_a_backfill_resumes_after_its_last_queued_page(opener: Opener) -> None:
    store = await opener()
    run = await store.begin_backfill("needed:product", total=5, now=10)
    assert (run.cursor, run.swept, run.total, run.finished_at) == (None, 0, 5, None)
    await store.advance_backfill("needed:product", backfilled("a", "b"), cursor="b", now=11)
    await store.close()

    store = await opener()  # a new process, after a kill
    try:
        run = await store.begin_backfill("needed:product", total=99, now=20)
        assert (run.cursor, run.swept, run.queued, run.started_at) == ("b", 2, 2, 10)
        assert run.total == 5  # the run's own count, not the new one
        accepted = await store.advance_backfill(
            "needed:product", backfilled("c"), cursor="c", now=21
        )
        assert accepted.queued == ("c",)
        await store.finish_backfill("needed:product", now=22)
        done = await store.backfill("needed:product")
        assert done is not None and done.finished_at == 22 and done.swept == 3

        fresh = await store.begin_backfill("needed:product", total=3, now=30)
        assert (fresh.cursor, fresh.swept, fresh.started_at, fresh.finished_at) == (
            None,
            0,
            30,
            None,
        )
        assert await store.backfill("needed:post") is None
    finally:
        await store.close()


async def test_a_backfill_page_joins_pending_jobs_and_leaves_backoffs_alone(
    store: JobStore,
) -> None:
    await store.accept("k", [ev("a")], now=0)
    job = await claim(store, now=0)
    assert job is not None
    await store.retry(job, now=1, run_after=500, error="503")
    await store.accept("k2", [ev("b")], now=1)
    await store.begin_backfill("all:product", total=None, now=2)
    accepted = await store.advance_backfill(
        "all:product", backfilled("a", "b", "c"), cursor="c", now=3
    )
    assert accepted.queued == ("c",) and set(accepted.coalesced) == {"a", "b"}
    assert await store.next_due() == 1  # b, due since its delivery; a still waits for 500
    latest = await store.latest_job("a")
    assert latest is not None and latest.run_after == 500
    run = await store.backfill("all:product")
    assert run is not None and (run.swept, run.queued, run.cursor) == (3, 1, "c")


async def test_jobs_are_counted_by_source_since_a_time(store: JobStore) -> None:
    await store.accept("k", [ev("old")], now=0)
    await store.begin_backfill("all:product", total=None, now=5)
    await store.advance_backfill("all:product", backfilled("x", "y"), cursor="y", now=5)
    job = await claim(store, now=6)
    assert job is not None and job.document_id == "old"
    job = await claim(store, now=6)
    assert job is not None and job.source is JobSource.BACKFILL
    await store.fail(job, now=7, error="gone")
    counts = await store.source_counts(JobSource.BACKFILL, since=5)
    assert counts[JobState.PENDING] == 1 and counts[JobState.FAILED] == 1
    assert sum((await store.source_counts(JobSource.BACKFILL, since=6)).values()) == 0
    (failed,) = await store.failures()
    assert failed.source is JobSource.BACKFILL and failed.last_error == "gone"


async def test_a_finished_backfill_cannot_be_advanced(store: JobStore) -> None:
    await store.begin_backfill("all:post", total=0, now=1)
    await store.finish_backfill("all:post", now=2)
    with pytest.raises(ValueError, match="no unfinished backfill"):
        await store.advance_backfill("all:post", backfilled("a"), cursor="a", now=3)
    assert await store.latest_job("a") is None  # nothing queued either


# -- the operator page's history ----------------------------------------------------------
async def test_history_keeps_every_run_after_the_jobs_are_gone(store: JobStore) -> None:
    await store.accept("k1", [ev("a")], now=0)
    first = await claim(store, now=1, owner="w1")
    assert first is not None
    await store.retry(first, now=2, run_after=10, error="Filestack: HTTP 503")
    second = await claim(store, now=10, owner="w2")
    assert second is not None
    await store.fail(second, now=11, error="Filestack: HTTP 400 Invalid URL")
    await store.enqueue([JobRequest("a", source=JobSource.REPLAY)], now=20)
    third = await claim(store, now=21, owner="w1")
    assert third is not None
    await store.finish(third, now=22, note="stored 1")
    await store.accept("k2", [ev("a")], now=30)  # a later job that has not run: no entry
    await store.accept("k3", [ev("b")], now=30)
    other = await claim(store, now=31, document_id="b")
    assert other is not None and await store.finish(other, now=32)

    runs = await store.history("a")
    assert [(r.outcome, r.attempt, r.source, r.worker) for r in runs] == [
        (RunOutcome.DONE, 1, JobSource.REPLAY, "w1"),
        (RunOutcome.FAILED, 2, JobSource.WEBHOOK, "w2"),
        (RunOutcome.RETRY, 1, JobSource.WEBHOOK, "w1"),
    ]
    assert [(r.started_at, r.ended_at) for r in runs] == [(21, 22), (10, 11), (1, 2)]
    assert [r.message for r in runs] == [
        "stored 1",
        "Filestack: HTTP 400 Invalid URL",
        "Filestack: HTTP 503",
    ]
    assert runs[0].job_id == third.id and runs[2].job_id == first.id
    assert [r.document_id for r in await store.history("b")] == ["b"]
    assert await store.history("never-seen") == []


async def test_a_retry_folded_into_a_newer_job_and_an_expired_lease_are_in_the_history(
    store: JobStore,
) -> None:
    await store.accept("k1", [ev("a")], now=0)
    job = await claim(store, now=0, owner="w1")
    await store.accept("k2", [ev("a")], now=1)
    assert job is not None and await store.retry(job, now=2, run_after=5, error="503")
    dead = await claim(store, now=5, owner="dead")
    assert dead is not None
    assert await claim(store, now=5 + LEASE + 1, owner="w2") is not None  # recovers it
    runs = await store.history("a")
    assert [(r.outcome, r.worker, r.ended_at) for r in runs] == [
        (RunOutcome.EXPIRED, "dead", 5 + LEASE + 1),
        (RunOutcome.RETRY, "w1", 2),
    ]
    assert runs[0].message is not None and "lease expired" in runs[0].message


async def test_a_release_is_not_a_run(store: JobStore) -> None:
    await store.accept("k", [ev("a")], now=0)
    job = await claim(store)
    assert job is not None and await store.release(job, now=1)
    assert await store.history("a") == []


async def test_history_is_capped_per_document_and_pruned_by_age(store: JobStore) -> None:
    for n in range(HISTORY_PER_DOCUMENT + 5):
        await store.enqueue([JobRequest("a", source=JobSource.REPLAY)], now=n)
        job = await claim(store, now=n)
        assert job is not None and await store.finish(job, now=n + 0.5, note=str(n))
    runs = await store.history("a", limit=1000)
    assert len(runs) == HISTORY_PER_DOCUMENT
    assert runs[0].message == str(HISTORY_PER_DOCUMENT + 4) and runs[-1].message == "5"
    await store.prune(before=HISTORY_PER_DOCUMENT)
    assert [r.message for r in await store.history("a")] == [
        str(n) for n in range(HISTORY_PER_DOCUMENT + 4, HISTORY_PER_DOCUMENT - 1, -1)
    ]


async def test_runs_are_counted_by_time_slot_and_outcome(store: JobStore) -> None:
    ends = {"a": 100.0, "b": 159.9, "c": 160.0, "d": 290.0, "old": 99.0}
    for doc_id, end in ends.items():
        await store.accept(f"k-{doc_id}", [ev(doc_id)], now=0)
        job = await claim(store, now=0, document_id=doc_id)
        assert job is not None
        if doc_id == "c":
            await store.retry(job, now=end, run_after=1000, error="503")
        else:
            await store.finish(job, now=end)
    counts = await store.run_counts(since=100, bucket=60)
    assert counts == {
        (0, RunOutcome.DONE): 2,
        (1, RunOutcome.RETRY): 1,
        (3, RunOutcome.DONE): 1,
    }
    await store.enqueue([JobRequest("e", source=JobSource.REPLAY)], now=0)
    job = await claim(store, now=0, document_id="e")
    assert job is not None and await store.finish(job, now=150)
    replays_only = await store.run_counts(since=100, bucket=60, source=JobSource.REPLAY)
    assert replays_only == {(0, RunOutcome.DONE): 1}


async def test_recent_documents_are_each_documents_latest_job(store: JobStore) -> None:
    await store.accept("k1", [ev("a"), ev("b")], now=0)
    job = await claim(store, now=1, document_id="a")
    assert job is not None and await store.finish(job, now=5)
    await store.accept("k2", [ev("a")], now=6)  # a's newest job is pending again
    await store.accept("k3", [ev("c")], now=3)
    recent = await store.recent_documents(limit=10)
    assert [(j.document_id, j.state) for j in recent] == [
        ("a", JobState.PENDING),
        ("c", JobState.PENDING),
        ("b", JobState.PENDING),
    ]
    assert [j.document_id for j in await store.recent_documents(limit=2)] == ["a", "c"]


async def test_backfill_runs_are_listed_most_recently_moved_first(store: JobStore) -> None:
    assert await store.backfills() == []
    await store.begin_backfill("all:post", total=2, now=1)
    await store.begin_backfill("needed:product", total=3, now=2)
    await store.advance_backfill("all:post", backfilled("p1"), cursor="p1", now=3)
    runs = await store.backfills()
    assert [(r.name, r.swept, r.total) for r in runs] == [
        ("all:post", 1, 2),
        ("needed:product", 0, 3),
    ]
