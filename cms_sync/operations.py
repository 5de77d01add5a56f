"""What operators do: status, failures, orphans and replay, as data.

Each use case takes the storage and returns plain values; rendering is the caller's: the
CLI prints lines or JSON, and the operator page (``/operator``) draws the same values. Nothing here
prints, reads settings or knows which backend is underneath, so ``status``, ``failures``
and ``replay`` answer alike on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cms_sync.deliveries import id_problem
from cms_sync.jobs import FailedJob, Job, JobRequest, JobSource, JobState, JobStore, RunningJob
from cms_sync.records import Orphan, UnseenCopies
from cms_sync.scrub import Scrubber
from cms_sync.storage import Storage
from cms_sync.sync import Syncer, SyncReport
from cms_sync.worker import Worker, WorkerOptions


def usable_id(document_id: str) -> str | None:
    """Why a document id cannot be synced, or None."""
    problem = id_problem(document_id)
    if problem is not None:
        return problem
    if document_id.startswith(("drafts.", "versions.")):
        return "only published documents are synced (drafts and versions are not)"
    return None


# -- status ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    jobs: dict[JobState, int]
    oldest_pending_age: float | None
    stored_assets: int
    unanswered_stores: int
    running: tuple[RunningJob, ...] = ()
    #: Jobs by state and source (pairs without jobs left out).
    by_source: dict[tuple[JobState, JobSource], int] = field(default_factory=dict)

    def sources(self) -> dict[JobSource, dict[JobState, int]]:
        """Job counts per source, each with every state (zero where none)."""
        table: dict[JobSource, dict[JobState, int]] = {}
        for (state, source), n in self.by_source.items():
            table.setdefault(source, dict.fromkeys(JobState, 0))[state] = n
        return dict(sorted(table.items(), key=lambda item: item[0].value))

    def by_owner(self) -> dict[str, list[RunningJob]]:
        """Running jobs grouped by the worker (replica) that holds their lease."""
        owners: dict[str, list[RunningJob]] = {}
        for job in self.running:
            owners.setdefault(job.owner, []).append(job)
        return owners


async def status(storage: Storage, *, now: float) -> Status:
    stats = await storage.jobs.stats(now=now)
    return Status(
        jobs=dict(stats.counts),
        oldest_pending_age=stats.oldest_pending_age,
        stored_assets=stats.stored_assets,
        unanswered_stores=stats.unanswered_stores,
        running=stats.running,
        by_source=dict(stats.by_source),
    )


# -- failures ----------------------------------------------------------------------------
async def failures(storage: Storage, *, scrub: Scrubber) -> list[FailedJob]:
    """Failed documents, newest first, with secrets scrubbed from their errors (rows
    written before a secret was configured included)."""
    return [
        FailedJob(f.document_id, f.attempts, scrub(f.last_error), f.failed_at)
        for f in await storage.jobs.failures()
    ]


# -- orphans -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Orphans:
    """Handles Filestack made for our assets that no document uses, and the assets whose
    stores may have made copies no notification named (their handles unknown to us)."""

    handles: list[Orphan]
    unseen: list[UnseenCopies]


async def orphans(storage: Storage, *, scrub: Scrubber) -> Orphans:
    handles, unseen = await storage.jobs.orphans()
    return Orphans(
        [dataclasses.replace(o, reason=scrub(o.reason)) for o in handles],
        [
            dataclasses.replace(u, last_error=scrub(u.last_error) if u.last_error else None)
            for u in unseen
        ],
    )


# -- replay ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Replayed:
    """What queueing documents again did."""

    queued: tuple[str, ...] = ()
    #: Ids refused before queueing, with the reason (a draft, not a Sanity id).
    refused: dict[str, str] = field(default_factory=dict)
    #: Queued, but the store never had a job for them (a mistyped id, perhaps).
    unseen: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.refused


async def replay(
    storage: Storage, document_ids: Sequence[str], *, all_failed: bool, now: float
) -> Replayed:
    """Queue documents again, due now, attempts and unanswered-store counts from zero."""
    ids = list(document_ids)
    if all_failed:
        ids += [failure.document_id for failure in await storage.jobs.failures()]
    ids = list(dict.fromkeys(ids))
    refused = {doc_id: p for doc_id in ids if (p := usable_id(doc_id)) is not None}
    ids = [doc_id for doc_id in ids if doc_id not in refused]
    if not ids:
        return Replayed(refused=refused)
    requests = [JobRequest(doc_id, source=JobSource.REPLAY) for doc_id in ids]
    accepted = await storage.jobs.enqueue(requests, now=now)
    return Replayed(queued=tuple(ids), refused=refused, unseen=accepted.unseen)


@dataclass(frozen=True)
class ReplayRun:
    """One document of ``replay --now``: run here (``report``), or what the service did."""

    document_id: str
    ok: bool
    report: SyncReport | None = None
    message: str | None = None  # when not run here, or interrupted


@dataclass
class ReplayNow:
    """Run replayed jobs here, unless the running service gets one first.

    The service and this command race for each job through the store; whoever claims it
    runs it. When the service wins, this waits (at most ``wait`` seconds) for the
    service's outcome and reports that, so what is reported is always what happened.
    """

    options: WorkerOptions
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    poll: float = 0.2
    wait: float | None = None  # default: the job lease
    scrub: Scrubber = field(default_factory=Scrubber)

    async def run(
        self, storage: Storage, syncer: Syncer, document_ids: Sequence[str]
    ) -> AsyncIterator[ReplayRun]:
        worker = Worker(storage.jobs, syncer, self.options, clock=self.clock, scrub=self.scrub)
        for document_id in document_ids:
            yield await self._one(storage.jobs, worker, document_id)

    async def _one(self, store: JobStore, worker: Worker, document_id: str) -> ReplayRun:
        started = self.clock()
        wait = self.options.lease if self.wait is None else self.wait
        while True:
            job = await worker.claim_document(document_id)
            if job is not None:
                report = await worker.execute(job)
                if report is None:
                    return ReplayRun(document_id, False, message="interrupted before it ran")
                return ReplayRun(document_id, report.ok, report=report)
            latest = await store.latest_job(document_id)
            if latest is None:  # pruned meanwhile: nothing left to say but that
                return ReplayRun(document_id, True, message="the running service ran it")
            settled = self._settled(latest)
            if settled is not None:
                return settled
            if self.clock() - started >= wait:
                return ReplayRun(
                    document_id,
                    False,
                    message=f"the running service is still running it after {wait:.0f} s "
                    "(cms-sync status shows when it ends)",
                )
            await self.sleep(self.poll)

    def _settled(self, job: Job) -> ReplayRun | None:
        """The service's outcome of the replayed job, once it has one."""
        doc = job.document_id
        if job.state is JobState.DONE:
            return ReplayRun(
                doc, True, message="synced by the running service, which claimed it first"
            )
        if job.state is JobState.FAILED:
            return ReplayRun(doc, False, message=f"failed in the running service: {job.last_error}")
        if job.state is JobState.PENDING and job.run_after > self.clock() and job.attempts > 0:
            return ReplayRun(
                doc,
                False,
                message=f"the running service ran it and retries at "
                f"{iso(job.run_after)}: {job.last_error}",
            )
        return None


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
