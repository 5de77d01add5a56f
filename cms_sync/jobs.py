"""Durable sync jobs: the interface the worker and the CLI use.

A job asks for one document to be synced. States::

    pending --claim--> running --finish--> done
       ^                 |  \\--fail-----> failed  (the dead-letter list; replay re-queues)
       '---retry/release-'
                         (a lease that expires makes a running job pending again)

Guarantees every implementation keeps (the contract tests in tests/test_jobs.py):

- a delivery's idempotency key and its jobs are written in one transaction; a repeated
  key writes nothing;
- at most one pending job per document (more deliveries coalesce into it) and at most one
  running job per document;
- a job may run more than once (a lease can expire under a slow worker): the sync itself
  is idempotent;
- only the lease owner can record a job's outcome.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cms_sync.filestack_notices import StoreNotice
from cms_sync.records import AssetRecords, Orphan, UnseenCopies


class JobSource(enum.StrEnum):
    """Who asked for a job."""

    WEBHOOK = "webhook"  # a Sanity delivery
    REPLAY = "replay"  # an operator
    BACKFILL = "backfill"  # a sweep of documents that existed before the worker


@dataclass(frozen=True)
class JobRequest:
    """A request to sync one document, from whichever source."""

    document_id: str
    operation: str | None = None  # create | update (deletes are never queued)
    #: The document must be at least this new (unix seconds): a webhook's transaction time.
    not_before: float | None = None
    source: JobSource = JobSource.WEBHOOK


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    id: int
    document_id: str
    state: JobState
    attempts: int  # claims so far, this one included
    run_after: float
    created_at: float
    updated_at: float
    operation: str | None = None
    not_before: float | None = None  # see JobRequest
    source: JobSource = JobSource.WEBHOOK
    read_retries: int = 0  # short retries spent waiting for the document to be readable
    last_error: str | None = None
    lease_owner: str | None = None
    #: The idempotency key of the latest delivery folded into the job (None when no
    #: delivery asked for it: a replay or a backfill), for the job's log lines.
    delivery_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    """What storing one delivery did."""

    duplicate: bool = False  # the idempotency key was seen before: nothing written
    queued: tuple[str, ...] = ()  # documents given a new pending job
    coalesced: tuple[str, ...] = ()  # documents that already had one
    #: Documents the store had no job for, ever (a replay of a mistyped id, perhaps).
    unseen: tuple[str, ...] = ()


class Confirmed(enum.StrEnum):
    """What Filestack's notification of a store did."""

    RECORDED = "recorded"  # the asset had no record: it has now; its documents are queued
    KNOWN = "known"  # the handle is the asset's record already
    ORPHAN = "orphan"  # the asset is recorded under another handle: this one is an orphan
    UNKNOWN = "unknown"  # no store of the asset was ever begun with this database
    DUPLICATE = "duplicate"  # the notification was handled before


@dataclass(frozen=True)
class Confirmation:
    outcome: Confirmed
    queued: tuple[str, ...] = ()  # documents given a job (RECORDED)
    reason: str | None = None  # why the orphan exists (ORPHAN)


@dataclass(frozen=True)
class FailedJob:
    document_id: str
    attempts: int
    last_error: str
    failed_at: float
    source: JobSource = JobSource.WEBHOOK


@dataclass(frozen=True)
class BackfillRun:
    """A sweep of the documents that existed before the worker, kept in the store so that
    a killed sweep resumes after the last page it queued."""

    name: str  # what is swept (the scope), e.g. "needed:post,product"
    cursor: str | None  # the last document id queued; None before the first page
    total: int | None  # documents in scope when the run began
    swept: int  # documents read so far
    queued: int  # of those, given a new job (the rest joined a pending one)
    started_at: float
    updated_at: float
    finished_at: float | None = None


class RunOutcome(enum.StrEnum):
    """How one run of a job ended, as the document's history keeps it."""

    DONE = "done"
    RETRY = "retry"  # to run again after a backoff
    FAILED = "failed"  # dead-lettered
    EXPIRED = "expired"  # its lease ran out: the worker stopped or crashed mid-run


@dataclass(frozen=True)
class JobRun:
    """One run of a job: kept after the job itself is gone (a store keeps only each
    document's latest done or failed job), for the operator page's document view."""

    document_id: str
    job_id: int
    attempt: int
    source: JobSource
    outcome: RunOutcome
    message: str | None  # the error of a retry or failure; a done run's note
    started_at: float
    ended_at: float
    worker: str | None  # the lease owner: which replica ran it


#: Runs kept per document (the oldest go first); all runs go after ``prune``'s cut-off.
HISTORY_PER_DOCUMENT = 50
#: The history's columns, in the order of :func:`run_row` (and of :class:`JobRun`).
RUN_COLUMNS = (
    "document_id",
    "job_id",
    "attempt",
    "source",
    "outcome",
    "message",
    "started_at",
    "ended_at",
    "worker",
)


def run_row(
    job: Job, outcome: RunOutcome, message: str | None, *, now: float
) -> tuple[object, ...]:
    """The history row of a run of ``job`` that ends ``now`` (it began at its claim,
    the job's ``updated_at``), for either backend."""
    return (
        job.document_id,
        job.id,
        job.attempts,
        job.source.value,
        outcome.value,
        message,
        job.updated_at,
        now,
        job.lease_owner,
    )


@dataclass(frozen=True)
class RunningJob:
    document_id: str
    owner: str  # the worker holding the lease: which replica runs it
    attempts: int
    started_at: float
    lease_until: float


@dataclass(frozen=True)
class StoreStats:
    counts: dict[JobState, int]
    oldest_pending_age: float | None
    stored_assets: int
    #: Assets whose last store went unanswered (or is in flight) and that have no record.
    unanswered_stores: int = 0
    running: tuple[RunningJob, ...] = ()  # oldest first
    #: Jobs by state and source (states and sources without jobs left out).
    by_source: dict[tuple[JobState, JobSource], int] = field(default_factory=dict)


class JobStore(Protocol):
    """What the webhook endpoint, the worker and the operator commands need of storage."""

    @property
    def records(self) -> AssetRecords: ...

    async def accept(
        self, idempotency_key: str | None, requests: Sequence[JobRequest], *, now: float
    ) -> Accepted:
        """Queue a delivery's requests, once per idempotency key (kept on the jobs as
        their ``delivery_id``)."""
        ...

    async def enqueue(self, requests: Sequence[JobRequest], *, now: float) -> Accepted:
        """Queue on an operator's say-so (replay): due now, attempts from zero, failed jobs
        and the documents' unanswered-store counts cleared; names the unseen."""
        ...

    async def latest_job(self, document_id: str) -> Job | None:
        """The document's newest job, in whatever state, or None."""
        ...

    async def confirm_store(self, notice: StoreNotice, *, now: float) -> Confirmation:
        """Take Filestack's word that it stored a file for an asset, once per notification.

        An asset without a record (its store's answer was lost, or the worker crashed
        mid-store) is recorded from the notice, its ledger entry settled, and every
        document that asked for it given a job due now: they are patched with no further
        store. An asset recorded under another handle gets this one as an orphan.
        """
        ...

    async def orphans(self) -> tuple[list[Orphan], list[UnseenCopies]]:
        """Handles no document uses (oldest first); and the assets whose stores may have
        made copies that no notification named."""
        ...

    async def claim(
        self,
        *,
        owner: str,
        now: float,
        lease: float,
        max_attempts: int,
        document_id: str | None = None,
    ) -> Job | None:
        """Take the next due job (of ``document_id`` only, when given), leased to ``owner``."""
        ...

    async def renew(self, job: Job, *, until: float) -> bool: ...

    async def finish(self, job: Job, *, now: float, note: str | None = None) -> bool: ...

    async def retry(
        self, job: Job, *, now: float, run_after: float, error: str, read_retry: bool = False
    ) -> bool: ...

    async def fail(self, job: Job, *, now: float, error: str) -> bool: ...

    async def release(self, job: Job, *, now: float) -> bool:
        """Give a claimed job back unrun (shutdown): the attempt does not count."""
        ...

    async def failures(self) -> list[FailedJob]: ...

    async def begin_backfill(self, name: str, *, total: int | None, now: float) -> BackfillRun:
        """The unfinished run called ``name``, to resume; else a new one from the start."""
        ...

    async def advance_backfill(
        self, name: str, requests: Sequence[JobRequest], *, cursor: str, now: float
    ) -> Accepted:
        """Queue one page's requests (as deliveries are queued: coalesced, backoffs left
        alone) and move the run's cursor past the page, in one transaction."""
        ...

    async def finish_backfill(self, name: str, *, now: float) -> None: ...

    async def backfill(self, name: str) -> BackfillRun | None: ...

    async def source_counts(self, source: JobSource, *, since: float) -> dict[JobState, int]:
        """Jobs of ``source`` created at or after ``since``, by state."""
        ...

    async def stats(self, *, now: float) -> StoreStats: ...

    async def next_due(self) -> float | None:
        """The earliest ``run_after`` of a pending job, or None."""
        ...

    async def check_writable(self, *, budget: float) -> None:
        """Prove within ``budget`` seconds that a delivery could be written now.

        Raises:
            StoreUnavailable: it could not (lock held, disk full, file gone, too slow).
        """
        ...

    async def history(self, document_id: str, *, limit: int = HISTORY_PER_DOCUMENT) -> list[JobRun]:
        """The document's runs, newest first."""
        ...

    async def run_counts(
        self, *, since: float, bucket: float, source: JobSource | None = None
    ) -> dict[tuple[int, RunOutcome], int]:
        """Runs that ended at or after ``since`` (of jobs from ``source`` only, when
        given), by ``bucket``-second slot (0 is the slot starting at ``since``) and outcome."""
        ...

    async def recent_documents(self, *, limit: int) -> list[Job]:
        """Each document's newest job, the most recently changed documents first."""
        ...

    async def backfills(self) -> list[BackfillRun]:
        """Every backfill run the store knows, the most recently moved first."""
        ...

    async def prune(self, *, before: float) -> None:
        """Forget delivery keys (Sanity retries for 30 minutes) and runs older than
        ``before``."""
        ...

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process queues or hands back a job, where the
        backend can tell (PostgreSQL's NOTIFY); otherwise polling finds it."""
        ...

    async def close(self) -> None: ...
