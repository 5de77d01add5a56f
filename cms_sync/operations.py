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
from urllib.parse import urlsplit

from cms_sync.backfill import Progress
from cms_sync.deliveries import id_problem
from cms_sync.errors import CmsSyncError
from cms_sync.filestack import transformation_url
from cms_sync.jobs import (
    FailedJob,
    Job,
    JobRequest,
    JobRun,
    JobSource,
    JobState,
    JobStore,
    RunningJob,
    RunOutcome,
)
from cms_sync.planner import Action, Plan
from cms_sync.records import Orphan, StoredAsset, UnseenCopies
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


# -- recent documents and throughput -----------------------------------------------------
async def recent_documents(storage: Storage, *, scrub: Scrubber, limit: int = 20) -> list[Job]:
    """Each document's newest job, the most recently changed first, errors scrubbed."""
    return [
        dataclasses.replace(job, last_error=scrub(job.last_error) if job.last_error else None)
        for job in await storage.jobs.recent_documents(limit=limit)
    ]


@dataclass(frozen=True)
class Throughput:
    """Job runs per time slot: ``slots[0]`` starts at ``since``, each ``bucket`` s long."""

    since: float
    bucket: float
    slots: tuple[dict[RunOutcome, int], ...]

    def total(self, outcome: RunOutcome) -> int:
        return sum(slot.get(outcome, 0) for slot in self.slots)

    @property
    def peak(self) -> int:
        """The most runs in one slot (0 when none)."""
        return max((sum(slot.values()) for slot in self.slots), default=0)


async def throughput(
    storage: Storage, *, now: float, window: float = 3600.0, bucket: float = 60.0
) -> Throughput:
    """Runs of the last ``window`` seconds by outcome, per ``bucket``, oldest first."""
    count = max(1, round(window / bucket))
    since = now - count * bucket
    counts = await storage.jobs.run_counts(since=since, bucket=bucket)
    slots: list[dict[RunOutcome, int]] = [{} for _ in range(count)]
    for (slot, outcome), n in counts.items():
        slots[min(max(slot, 0), count - 1)][outcome] = n  # a run ending exactly now: last slot
    return Throughput(since, bucket, tuple(slots))


# -- backfill ----------------------------------------------------------------------------
#: The backfill rate is measured over this many recent seconds.
BACKFILL_RATE_WINDOW = 300.0


async def backfills(storage: Storage, *, now: float, limit: int = 5) -> list[Progress]:
    """The latest backfill runs with their jobs by state, rate and ETA (``Progress.eta``):
    the rate is the backfill's runs ended in the last five minutes (of the run)."""
    progress = []
    for run in (await storage.jobs.backfills())[:limit]:
        jobs = await storage.jobs.source_counts(JobSource.BACKFILL, since=run.started_at)
        end = run.finished_at or now
        window = max(min(BACKFILL_RATE_WINDOW, end - run.started_at), 0.0)
        recent = await storage.jobs.run_counts(
            since=end - window, bucket=max(window, 1.0), source=JobSource.BACKFILL
        )
        ended = sum(n for (_, outcome), n in recent.items() if outcome is not RunOutcome.RETRY)
        progress.append(Progress(run=run, jobs=jobs, elapsed=window, done_here=ended))
    return progress


# -- one document ------------------------------------------------------------------------
@dataclass(frozen=True)
class SlotState:
    """One media slot as the document holds it, and what the worker would do with it."""

    path: str
    action: Action
    reason: str
    asset_id: str | None
    handle: str | None
    url: str | None
    mime_type: str | None
    size: int | None
    #: The asset's stored copy, when there is one (a STORE slot with a record is stored
    #: and waits only for its patch).
    record: StoredAsset | None = None

    @property
    def state(self) -> str:
        if self.action is Action.STORE and self.record is not None:
            return "stored"
        return {Action.STORE: "to store"}.get(self.action, self.action.value)

    @property
    def link(self) -> str | None:
        """The slot's Filestack URL when it is one a page may link to (an editor can
        write anything into the field: a ``javascript:`` URL is not linked)."""
        if self.url and urlsplit(self.url).scheme in ("http", "https"):
            return self.url
        return None

    @property
    def thumbnail(self) -> str | None:
        """A small rendition through Filestack's transformation URL, for images only."""
        if not (self.link and self.handle and (self.mime_type or "").startswith("image/")):
            return None
        return transformation_url(self.link, self.handle, "resize=width:160")


@dataclass(frozen=True)
class DocumentView:
    document_id: str
    latest: Job | None
    history: list[JobRun]
    #: The document's slots as read now from Sanity; None when it could not be read.
    slots: tuple[SlotState, ...] | None
    document_type: str | None = None
    rev: str | None = None
    #: Why the document's slots are not shown (not found, unmapped type, Sanity down).
    read_error: str | None = None
    orphans: list[Orphan] = field(default_factory=list)
    unseen: list[UnseenCopies] = field(default_factory=list)


async def document(
    storage: Storage,
    document_id: str,
    *,
    plan: Callable[[str], Awaitable[Plan]] | None,
    scrub: Scrubber,
    read_within: float = 5.0,
) -> DocumentView:
    """A document's runs, its slots (``plan`` reads and plans it: ``Syncer.plan``; None
    when there is no Sanity to read; given up after ``read_within`` seconds, retries
    included, so a slow Sanity cannot hold a page) and the orphans of its assets."""
    latest = await storage.jobs.latest_job(document_id)
    if latest is not None and latest.last_error:
        latest = dataclasses.replace(latest, last_error=scrub(latest.last_error))
    history = [
        dataclasses.replace(run, message=scrub(run.message) if run.message else None)
        for run in await storage.jobs.history(document_id)
    ]
    view = DocumentView(document_id, latest, history, slots=None)
    problem = usable_id(document_id)
    if problem is not None:
        return dataclasses.replace(view, read_error=problem)
    if plan is None:
        return dataclasses.replace(view, read_error="no Sanity client in this process")
    try:
        async with asyncio.timeout(read_within):
            planned = await plan(document_id)
    except CmsSyncError as exc:
        return dataclasses.replace(view, read_error=scrub(str(exc)))
    except TimeoutError:
        return dataclasses.replace(
            view, read_error=f"Sanity did not answer within {read_within:g} s"
        )
    slots = []
    for slot_plan in planned.slots:
        slot, asset = slot_plan.slot, slot_plan.slot.asset
        record = None
        if asset is not None and slot_plan.action is Action.STORE:
            record = await storage.records.get(asset.id)
        slots.append(
            SlotState(
                path=slot.path,
                action=slot_plan.action,
                reason=slot_plan.reason,
                asset_id=asset.id if asset else None,
                handle=slot.handle,
                url=slot.url,
                mime_type=slot.mime_type or (asset.mime_type if asset else None),
                size=slot.size,
                record=record,
            )
        )
    assets = {s.asset_id for s in slots if s.asset_id}
    handles, unseen = await storage.jobs.orphans()
    return dataclasses.replace(
        view,
        slots=tuple(slots),
        document_type=planned.document.type,
        rev=planned.document.rev,
        orphans=[
            dataclasses.replace(o, reason=scrub(o.reason)) for o in handles if o.asset_id in assets
        ],
        unseen=[u for u in unseen if u.asset_id in assets],
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
