"""Prometheus metrics: a listener of the events, and the job store read at scrape time.

Counters and histograms move as events arrive (:mod:`cms_sync.events`); nothing in the
worker, the syncer or the clients knows they exist. What the job store knows (jobs by
state and source, the queue's depth and age, assets waiting on an unanswered store) is
read when Prometheus scrapes, so it is right for every replica writing to the same store;
the rate limiter's waits are read from its own tally at the same time.

``cms-sync serve`` runs its worker in a child process that sends every event back to the
service over a pipe (:mod:`cms_sync.worker_process`), so the service's one registry
counts them all (no multiprocess mode). Each replica is a target of its own: sum
the counters across them; the store's gauges are the same on every replica, so take
``max``. Every name starts with ``cms_sync_``; no label holds a document id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cms_sync.errors import StoreUnavailable
from cms_sync.events import (
    AssetStored,
    CallEnded,
    DeliveryEnded,
    DeliveryOutcome,
    Event,
    JobEnded,
    NoticeEnded,
    NoticeOutcome,
    PatchConflict,
    Remote,
    StoreUnanswered,
    SyncEnded,
)
from cms_sync.jobs import JobSource, JobState, StoreStats
from cms_sync.ratelimit import Limit, LimitStats

#: The text format every Prometheus version reads (what ``generate_latest`` writes for
#: names like ours; newer clients label it 1.0.0, which older scrapers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: From a fast Sanity query (a few ms) to a large store (Filestack allows minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def status_class(status: int | None, error_type: str | None) -> str:
    """A call's outcome as a label of few values: 2xx, 4xx, 429, 5xx, or the error."""
    if status is None or error_type is not None:
        return error_type or "no_answer"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


@dataclass(frozen=True)
class CallRate:
    """Calls to one remote over a recent window."""

    calls: int
    errors: int  # answers other than a 2xx (429s included), and calls with no answer
    throttled: int  # 429s

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


class RecentCalls:
    """Calls per remote over the last ``window`` seconds, in one-minute slots: the
    operator page's error rates (this process's calls only; Prometheus has the rest)."""

    def __init__(self, *, window: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        self._slots: dict[tuple[Remote, int], list[int]] = {}  # [calls, errors, 429s]

    def add(self, remote: Remote, outcome: str) -> None:
        minute = int(self._clock() // 60)
        tally = self._slots.setdefault((remote, minute), [0, 0, 0])
        tally[0] += 1
        tally[1] += outcome != "2xx"
        tally[2] += outcome == "429"
        if len(self._slots) > 4 * len(Remote) * (self.window // 60 + 1):
            self._forget(minute)

    def rates(self) -> dict[Remote, CallRate]:
        """Each remote's calls in the window (every remote, zero when it had none)."""
        minute = int(self._clock() // 60)
        self._forget(minute)
        totals = {remote: [0, 0, 0] for remote in Remote}
        for (remote, _), tally in self._slots.items():
            totals[remote] = [a + b for a, b in zip(totals[remote], tally, strict=True)]
        return {remote: CallRate(*tally) for remote, tally in totals.items()}

    def _forget(self, minute: int) -> None:
        oldest = minute - int(self.window // 60) + 1
        for key in [k for k in self._slots if k[1] < oldest]:
            del self._slots[key]


class HasStats(Protocol):
    """The part of a job store a scrape reads."""

    async def stats(self, *, now: float) -> StoreStats: ...


class LimitTally(Protocol):
    """A rate limiter's tally: this process's limiter, or the worker process's report."""

    @property
    def stats(self) -> Mapping[Limit, LimitStats]: ...


class _LimiterWaits(Collector):
    """The rate limiters' tallies, summed, read at scrape time."""

    def __init__(self, limiters: Sequence[LimitTally]) -> None:
        self._limiters = limiters

    def collect(self) -> Iterable[Metric]:
        waits = CounterMetricFamily(
            "cms_sync_rate_limit_waits",
            "Requests that waited for a rate-limit token, by limit.",
            labels=["limit"],
        )
        waited = CounterMetricFamily(
            "cms_sync_rate_limit_wait_seconds",
            "Seconds spent waiting for rate-limit tokens, by limit.",
            labels=["limit"],
        )
        totals: dict[Limit, LimitStats] = {}
        for limiter in self._limiters:
            for limit, stats in limiter.stats.items():
                total = totals.setdefault(limit, LimitStats())
                total.waits += stats.waits
                total.waited += stats.waited
        for limit, total in sorted(totals.items()):
            waits.add_metric([limit.value], total.waits)
            waited.add_metric([limit.value], total.waited)
        yield waits
        yield waited


class Metrics:
    """The service's metrics in one registry of its own (one per app, so tests and
    several apps in one process do not collide)."""

    def __init__(
        self, limiter: LimitTally | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self.recent_calls = RecentCalls(clock=clock)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.deliveries = counter(
            "cms_sync_deliveries",
            "Sanity webhook deliveries, by how they were answered.",
            "outcome",
        )
        self.notices = counter(
            "cms_sync_filestack_notices",
            "Filestack webhook notifications, by what they did (recorded: a lost answer "
            "completed; orphan: a second handle of an asset).",
            "outcome",
        )
        self.job_runs = counter(
            "cms_sync_job_runs",
            "Job runs, by verdict and by who asked for the job.",
            "verdict",
            "source",
        )
        self.errors = counter(
            "cms_sync_errors",
            "Errors of job runs, by class: the document's, and each failed slot's.",
            "error",
        )
        self.stored = counter(
            "cms_sync_assets_stored", "Assets stored in Filestack (one store each)."
        )
        self.reused = counter(
            "cms_sync_slots_reused",
            "Slots patched from an earlier store of the same asset (no store of their own).",
        )
        self.unanswered = counter(
            "cms_sync_stores_unanswered",
            "Stores whose answer was lost: Filestack may hold a copy (ambiguous stores).",
        )
        self.patch_conflicts = counter(
            "cms_sync_patch_conflicts",
            "Patches refused because the document changed after it was read.",
        )
        self.calls = Histogram(
            "cms_sync_remote_call_seconds",
            "Time of each request to Sanity or Filestack, to the whole answer.",
            ["remote", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.call_outcomes = counter(
            "cms_sync_remote_calls",
            "Requests to Sanity or Filestack, by outcome (2xx, 4xx, 429, 5xx, or the error).",
            "remote",
            "operation",
            "outcome",
        )
        self.jobs = gauge(
            "cms_sync_jobs",
            "Jobs in the store, by state and by who asked for them.",
            "state",
            "source",
        )
        self.queue_depth = gauge("cms_sync_queue_depth", "Pending jobs (due now or backing off).")
        self.oldest_pending = gauge(
            "cms_sync_oldest_pending_seconds", "Age of the oldest pending job (0 when none)."
        )
        self.waiting_assets = gauge(
            "cms_sync_assets_unanswered",
            "Assets whose last store went unanswered and that have no stored copy yet.",
        )
        self.store_up = gauge(
            "cms_sync_store_up", "1 when the job store answered this scrape, else 0."
        )
        # Every outcome shows from the start, at 0; each delivery then counts on its own
        # child directly (``labels()`` is a locked lookup, paid per delivery otherwise).
        self._delivery_counts = {o: self.deliveries.labels(o.value) for o in DeliveryOutcome}
        self._notice_counts = {o: self.notices.labels(o.value) for o in NoticeOutcome}
        self._limiters: list[LimitTally] = []
        registry.register(_LimiterWaits(self._limiters))
        if limiter is not None:
            self.add_limiter(limiter)

    def add_limiter(self, limiter: LimitTally) -> None:
        """Count another limiter's waits too (the worker's process reports its own)."""
        self._limiters.append(limiter)

    # -- the listener -------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        match event:
            case DeliveryEnded():
                self._delivery_counts[event.outcome].inc()
            case NoticeEnded():
                self._notice_counts[event.outcome].inc()
            case JobEnded():
                verdict = event.verdict.value.replace(" ", "_")
                self.job_runs.labels(verdict, event.job.source.value).inc()
                for error in event.errors:
                    self.errors.labels(error).inc()
            case AssetStored():
                self.stored.inc()
            case StoreUnanswered():
                self.unanswered.inc()
            case PatchConflict():
                self.patch_conflicts.inc()
            case CallEnded():
                remote = event.remote.value
                self.calls.labels(remote, event.operation).observe(event.seconds)
                outcome = status_class(event.status, event.error_type)
                self.call_outcomes.labels(remote, event.operation, outcome).inc()
                self.recent_calls.add(event.remote, outcome)
            case SyncEnded(patched=True):
                self.reused.inc(event.reused)

    # -- a scrape -----------------------------------------------------------------------
    async def exposition(self, store: HasStats, *, now: float) -> bytes:
        """The text Prometheus scrapes, with the store's figures read now."""
        try:
            stats = await store.stats(now=now)
        except StoreUnavailable:
            self.store_up.set(0)
        else:
            self.store_up.set(1)
            for state in JobState:
                for source in JobSource:
                    self.jobs.labels(state.value, source.value).set(
                        stats.by_source.get((state, source), 0)
                    )
            self.queue_depth.set(stats.counts.get(JobState.PENDING, 0))
            self.oldest_pending.set(stats.oldest_pending_age or 0.0)
            self.waiting_assets.set(stats.unanswered_stores)
        return generate_latest(self.registry)
