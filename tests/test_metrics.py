"""``GET /metrics``: Prometheus's text format, parsed by prometheus-client's own parser,
and figures that move as deliveries arrive and jobs run (over real sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_world import World, running_world

from cms_sync.errors import StoreUnavailable
from cms_sync.events import (
    AssetStored,
    CallEnded,
    DeliveryEnded,
    DeliveryOutcome,
    JobEnded,
    Remote,
    StoreUnanswered,
    SyncEnded,
    Verdict,
)
from cms_sync.jobs import Job, JobSource, JobState, StoreStats
from cms_sync.metrics import Metrics, status_class
from cms_sync.ratelimit import Limit, LimitStats, RateLimiter
from wiring import Sleeps

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by name and labels (prometheus-client's parser: it refuses bad text)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(world: World) -> Samples:
    response = world.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_metrics_move_as_a_delivery_is_queued_and_its_job_runs(tmp_path: Path) -> None:
    with running_world(tmp_path / "jobs.db") as world:
        before = scrape(world)
        assert value(before, "cms_sync_deliveries_total", outcome="queued") == 0
        assert value(before, "cms_sync_store_up") == 1

        assert world.deliver(world.lake.documents["product-1"]).status_code == 202
        world.wait_idle()
        after = scrape(world)

        assert value(after, "cms_sync_deliveries_total", outcome="queued") == 1
        assert value(after, "cms_sync_job_runs_total", verdict="done", source="webhook") == 1
        assert value(after, "cms_sync_jobs", state="done", source="webhook") == 1
        assert value(after, "cms_sync_jobs", state="pending", source="webhook") == 0
        assert value(after, "cms_sync_queue_depth") == 0
        assert value(after, "cms_sync_assets_stored_total") == len(world.fs.stores) == 5
        stores = value(
            after, "cms_sync_remote_call_seconds_count", remote="filestack", operation="store"
        )
        assert stores == 5
        assert value(
            after, "cms_sync_remote_calls_total", remote="sanity", operation="mutate", outcome="2xx"
        ) == len(world.lake.mutations)
        assert value(
            after, "cms_sync_remote_call_seconds_count", remote="sanity", operation="query"
        )
        assert (
            value(after, "cms_sync_remote_call_seconds_sum", remote="filestack", operation="store")
            > 0
        )

        # The echo of our own patch: a second run that stores nothing.
        world.deliver(world.lake.documents["product-1"])
        world.wait_idle()
        again = scrape(world)
        assert value(again, "cms_sync_job_runs_total", verdict="done", source="webhook") == 2
        assert value(again, "cms_sync_assets_stored_total") == 5


def test_rejections_and_throttling_are_counted_by_outcome_and_class(tmp_path: Path) -> None:
    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": "slow down"})

    with running_world(tmp_path / "jobs.db", cms_sync_retry_attempts=1) as world:
        doc = world.lake.documents["post-1"]
        forged = world.http.post(
            "/webhooks/sanity", content=b'{"_id": "post-1"}', headers={"idempotency-key": "x"}
        )
        assert forged.status_code == 401
        world.fs.scripted = [throttled] * 100
        assert world.deliver(doc).status_code == 202
        world.wait_idle()
        samples = scrape(world)

    assert value(samples, "cms_sync_deliveries_total", outcome="unauthorized") == 1
    assert value(samples, "cms_sync_job_runs_total", verdict="retry", source="webhook") == 1
    assert value(samples, "cms_sync_jobs", state="pending", source="webhook") == 1
    assert value(samples, "cms_sync_queue_depth") == 1
    assert value(samples, "cms_sync_errors_total", error="RateLimited") >= 1
    assert (
        value(
            samples,
            "cms_sync_remote_calls_total",
            remote="filestack",
            operation="store",
            outcome="429",
        )
        >= 1
    )
    assert value(samples, "cms_sync_assets_stored_total") == 0


def job(source: JobSource = JobSource.BACKFILL) -> Job:
    return Job(7, "product-1", JobState.RUNNING, 1, 0.0, 0.0, 0.0, source=source)


class Store:
    """A job store that answers ``stats`` from a value, or cannot be read."""

    def __init__(self, stats: StoreStats | None) -> None:
        self._stats = stats

    async def stats(self, *, now: float) -> StoreStats:
        if self._stats is None:
            raise StoreUnavailable("database is locked")
        return self._stats


pytestmark = pytest.mark.anyio


async def test_every_event_moves_its_metric() -> None:
    metrics = Metrics()
    for event in (
        DeliveryEnded(DeliveryOutcome.TOO_LARGE, "body larger than 1 bytes"),
        JobEnded(job(), Verdict.RETRY_SOON, errors=("StaleRead",)),
        JobEnded(job(), Verdict.FAIL, errors=("RejectedError", "SlotBlocked")),
        AssetStored("image-a", "h1", 10),
        StoreUnanswered("image-b", 1, "no answer"),
        SyncEnded("product-1", "r1", patched=True, stored=1, reused=3),
        SyncEnded("product-2", "r1", patched=False, reused=2),  # nothing written: no reuse
        CallEnded(Remote.FILESTACK, "store", 0.3, None, "ResponseTimeout"),
        CallEnded(Remote.SANITY, "query", 0.02, 503),
    ):
        metrics.emit(event)
    stats = StoreStats(
        counts={JobState.PENDING: 3},
        oldest_pending_age=42.0,
        stored_assets=1,
        unanswered_stores=1,
        by_source={
            (JobState.PENDING, JobSource.BACKFILL): 2,
            (JobState.PENDING, JobSource.REPLAY): 1,
        },
    )
    samples = parse((await metrics.exposition(Store(stats), now=0.0)).decode())

    assert value(samples, "cms_sync_deliveries_total", outcome="too_large") == 1
    assert value(samples, "cms_sync_deliveries_total", outcome="queued") == 0  # present at 0
    assert ("cms_sync_deliveries_total", frozenset({("outcome", "queued")})) in samples
    assert value(samples, "cms_sync_job_runs_total", verdict="retry_soon", source="backfill") == 1
    assert value(samples, "cms_sync_errors_total", error="SlotBlocked") == 1
    assert value(samples, "cms_sync_errors_total", error="StaleRead") == 1
    assert value(samples, "cms_sync_assets_stored_total") == 1
    assert value(samples, "cms_sync_stores_unanswered_total") == 1
    assert value(samples, "cms_sync_slots_reused_total") == 3
    assert (
        value(
            samples,
            "cms_sync_remote_calls_total",
            remote="filestack",
            operation="store",
            outcome="ResponseTimeout",
        )
        == 1
    )
    assert (
        value(
            samples,
            "cms_sync_remote_calls_total",
            remote="sanity",
            operation="query",
            outcome="5xx",
        )
        == 1
    )
    assert value(samples, "cms_sync_jobs", state="pending", source="backfill") == 2
    assert value(samples, "cms_sync_jobs", state="pending", source="replay") == 1
    assert value(samples, "cms_sync_jobs", state="failed", source="webhook") == 0
    assert value(samples, "cms_sync_queue_depth") == 3
    assert value(samples, "cms_sync_oldest_pending_seconds") == 42
    assert value(samples, "cms_sync_assets_unanswered") == 1


async def test_a_store_that_cannot_be_read_still_serves_the_counters() -> None:
    metrics = Metrics()
    metrics.emit(AssetStored("image-a", "h1", 10))
    samples = parse((await metrics.exposition(Store(None), now=0.0)).decode())
    assert value(samples, "cms_sync_store_up") == 0
    assert value(samples, "cms_sync_assets_stored_total") == 1


async def test_rate_limiter_waits_are_read_from_the_limiter() -> None:
    sleeps, now = Sleeps(), [0.0]
    limiter = RateLimiter({Limit.SANITY_MUTATE: 2.0}, clock=lambda: now[0], sleep=sleeps)
    metrics = Metrics(limiter)
    for _ in range(3):
        await limiter.acquire(Limit.SANITY_MUTATE)
    samples = parse((await metrics.exposition(Store(None), now=0.0)).decode())
    assert value(samples, "cms_sync_rate_limit_waits_total", limit="sanity.mutate") == 2
    assert (
        value(samples, "cms_sync_rate_limit_wait_seconds_total", limit="sanity.mutate")
        == pytest.approx(sum(sleeps.waits))
        == pytest.approx(0.5 + 1.0)
    )


async def test_the_worker_processs_reported_waits_add_to_this_processs() -> None:
    class Reported:  # what WorkerProcess keeps of its child's reports
        def __init__(self) -> None:
            self.stats = {
                Limit.SANITY_MUTATE: LimitStats(waits=3, waited=1.5),
                Limit.FILESTACK_STORE: LimitStats(waits=1, waited=0.25),
            }

    limiter = RateLimiter({Limit.SANITY_MUTATE: 2.0})
    limiter.stats[Limit.SANITY_MUTATE] = LimitStats(waits=2, waited=1.0)
    metrics = Metrics(limiter)
    metrics.add_limiter(Reported())
    samples = parse((await metrics.exposition(Store(None), now=0.0)).decode())
    assert value(samples, "cms_sync_rate_limit_waits_total", limit="sanity.mutate") == 5
    assert value(samples, "cms_sync_rate_limit_wait_seconds_total", limit="sanity.mutate") == 2.5
    assert value(samples, "cms_sync_rate_limit_waits_total", limit="filestack.store") == 1


@pytest.mark.parametrize(
    ("status", "error", "label"),
    [
        (200, None, "2xx"),
        (409, None, "4xx"),
        (429, None, "429"),
        (502, None, "5xx"),
        (None, "ConnectError", "ConnectError"),
        (None, None, "no_answer"),
    ],
)
def test_call_outcomes_are_few_labels(status: int | None, error: str | None, label: str) -> None:
    assert status_class(status, error) == label


def test_scrapes_of_two_apps_in_one_process_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.emit(AssetStored("image-a", "h1", 10))

    async def both() -> tuple[Samples, Samples]:
        store = Store(None)
        one = await first.exposition(store, now=0.0)
        two = await second.exposition(store, now=0.0)
        return parse(one.decode()), parse(two.decode())

    one, two = asyncio.run(both())
    assert value(one, "cms_sync_assets_stored_total") == 1
    assert value(two, "cms_sync_assets_stored_total") == 0
