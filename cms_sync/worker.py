"""The worker: claims jobs from the store, runs the core sync, records the outcome.

One dispatcher keeps up to ``concurrency`` jobs in flight. It wakes when the webhook
queues something (``wake()``), when a job finishes, when the next retry falls due, and
every ``poll_interval`` (jobs queued by another process). While a job runs its lease is
renewed; if the process dies the lease runs out and another claim takes the job again.
On stop it claims nothing more, lets running jobs finish within the grace period, and
gives the rest back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from cms_sync.backoff import Backoff
from cms_sync.errors import (
    AmbiguousStore,
    AuthenticationError,
    CmsSyncError,
    DocumentNotFound,
    InternalError,
    InvalidResponse,
    RevisionConflict,
    StaleRead,
    StoreDeferred,
    StoreUnanswered,
    StoreUnavailable,
    TransportError,
    UnavailableError,
    UnmappedType,
)
from cms_sync.events import Events, JobEnded, LogEvents, Verdict
from cms_sync.jobs import Job, JobStore
from cms_sync.scrub import Scrubber
from cms_sync.settings import JobSettings
from cms_sync.sync import Syncer, SyncReport

log = structlog.get_logger(__name__)

#: Delivery keys are kept a week: Sanity retries a delivery for 30 minutes.
INBOX_RETENTION = 7 * 24 * 3600.0
_PRUNE_EVERY = 3600.0


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    message: str | None = None
    #: A retry must not run before this (an asset waiting out its unanswered-store backoff).
    not_before: float | None = None


def is_retryable(error: CmsSyncError) -> bool:
    """Whether the same job may succeed later without anyone changing anything but time.

    Credentials count as retryable: fixing them is a redeploy, after which the queued
    jobs should simply go through.
    """
    return isinstance(
        error,
        TransportError
        | UnavailableError
        | InvalidResponse
        | RevisionConflict
        | AuthenticationError
        | StoreUnavailable
        | InternalError
        | AmbiguousStore
        | StoreDeferred,
    )


def judge(report: SyncReport, job: Job, *, read_retries: int) -> Outcome:
    """Decide what happens to a job after one sync. Pure."""
    error = report.error
    if error is not None:
        message = str(error)
        if isinstance(error, UnmappedType):
            return Outcome(Verdict.DONE, f"ignored: {message}")
        waiting_to_read = isinstance(error, StaleRead) or (
            isinstance(error, DocumentNotFound) and job.operation in ("create", "update")
        )
        if waiting_to_read and job.read_retries < read_retries:
            return Outcome(Verdict.RETRY_SOON, message)
        return Outcome(Verdict.RETRY if is_retryable(error) else Verdict.FAIL, message)
    if report.failures:
        message = "; ".join(f"{f.slot}: {f.error}" for f in report.failures)
        retry = any(is_retryable(f.error) for f in report.failures)
        waits = [
            f.error.retry_at
            for f in report.failures
            if isinstance(f.error, StoreUnanswered) and f.error.retry_at is not None
        ]
        if not retry:
            return Outcome(Verdict.FAIL, message)
        return Outcome(Verdict.RETRY, message, not_before=max(waits, default=None))
    return Outcome(Verdict.DONE)


def error_types(report: SyncReport) -> tuple[str, ...]:
    """The class of each error in the report: the document's, then each failed slot's."""
    errors = [report.error] if report.error is not None else []
    errors += [failure.error for failure in report.failures]
    return tuple(type(error).__name__ for error in errors)


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    lease: float = 60.0
    poll_interval: float = 1.0
    shutdown_grace: float = 25.0
    read_retries: int = 3
    read_retry_delay: float = 2.0
    schedule: Backoff = field(default_factory=Backoff)  # about an hour in 11 attempts


def worker_options(settings: JobSettings) -> WorkerOptions:
    """The worker's options from its settings section."""
    return WorkerOptions(
        concurrency=settings.cms_sync_workers,
        lease=settings.cms_sync_job_lease,
        poll_interval=settings.cms_sync_poll_interval,
        shutdown_grace=settings.cms_sync_shutdown_grace,
        read_retries=settings.cms_sync_read_retries,
        read_retry_delay=settings.cms_sync_read_retry_delay,
        schedule=Backoff(
            base=settings.cms_sync_job_backoff,
            maximum=settings.cms_sync_job_backoff_max,
            max_attempts=settings.cms_sync_job_max_attempts,
        ),
    )


class Worker:
    def __init__(
        self,
        store: JobStore,
        syncer: Syncer,
        options: WorkerOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        scrub: Scrubber | None = None,
        events: Events | None = None,
        on_waiting: Callable[[], None] | None = None,
    ) -> None:
        """
        Args:
            scrub: the configured secrets, scrubbed from every error before it is stored.
            events: told of each job's end once its outcome is recorded (by default,
                the log).
            on_waiting: called each time the dispatcher found nothing to claim and waits
                with a slot free: only then does a ``wake()`` make a difference (the
                worker's process tells the service, which wakes it only then).
        """
        self._events = events or LogEvents()
        self._store = store
        self._scrub = scrub or Scrubber()
        self._syncer = syncer
        self._options = options or WorkerOptions()
        self._clock = clock
        #: Names the replica in ``status``: host (a pod's name), process, and a nonce.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[SyncReport | None]] = set()
        self._last_prune = 0.0
        self._on_waiting = on_waiting
        #: Set while nothing is due and nothing runs (tests and health checks wait on it).
        self.idle = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch(), name="cms-sync-dispatcher")

    @property
    def running(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    def wake(self) -> None:
        """Something was queued: look for work now rather than at the next poll.

        With every slot taken there is nothing to do until a job ends (which wakes the
        dispatcher itself): a busy worker is not woken once per delivery for nothing.
        """
        self.idle.clear()
        if len(self._tasks) < self._options.concurrency:
            self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; give running jobs the grace period; release the rest."""
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            try:
                await self._dispatcher
            except Exception:  # a crashed dispatcher was already visible in /readyz
                log.exception("dispatcher_crashed")
        if not self._tasks:
            return
        log.info("worker_stopping", in_flight=len(self._tasks))
        _, late = await asyncio.wait(self._tasks, timeout=self._options.shutdown_grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def drain(self) -> int:
        """Burst mode: run every job due now, until none is left; return how many ran."""
        ran = 0
        while True:
            jobs: list[Job] = []
            for _ in range(self._options.concurrency):
                job = await self._claim()
                if job is None:
                    break
                jobs.append(job)
            if not jobs:
                return ran
            await asyncio.gather(*(self.execute(job) for job in jobs))
            ran += len(jobs)

    # -- the loop -----------------------------------------------------------------------
    async def _dispatch(self) -> None:
        log.info(
            "worker_started",
            owner=self.owner,
            concurrency=self._options.concurrency,
            pid=os.getpid(),
        )
        while not self._stopping:
            self._wake.clear()
            if len(self._tasks) >= self._options.concurrency:
                await self._wake.wait()
                continue
            try:
                job = await self._claim()
            except StoreUnavailable as exc:
                log.error("claim_failed", error=str(exc))
                await self._sleep(self._options.poll_interval)
                continue
            if job is None:
                if not self._tasks:
                    self.idle.set()
                await self._maybe_prune()
                if self._on_waiting is not None:
                    self._on_waiting()
                await self._sleep(await self._until_next_due())
                continue
            self.idle.clear()
            task = asyncio.create_task(self.execute(job), name=f"cms-sync-job-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[SyncReport | None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The job's lease runs out and it runs again; the bug must still be seen.
            log.error("job_task_crashed", error=repr(exc), exc_info=exc)

    async def _claim(self, document_id: str | None = None) -> Job | None:
        return await self._store.claim(
            owner=self.owner,
            now=self._clock(),
            lease=self._options.lease,
            max_attempts=self._options.schedule.max_attempts,
            document_id=document_id,
        )

    async def claim_document(self, document_id: str) -> Job | None:
        """Claim the due job of one document (``replay --now``), if nobody runs it."""
        return await self._claim(document_id)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))

    async def _until_next_due(self) -> float:
        poll = self._options.poll_interval
        try:
            due = await self._store.next_due()
        except StoreUnavailable:
            return poll
        if due is None:
            return poll
        return min(poll, max(due - self._clock(), 0.01))

    async def _maybe_prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            await self._store.prune(before=now - INBOX_RETENTION)
        except StoreUnavailable as exc:
            log.warning("prune_failed", error=str(exc))

    # -- one job ------------------------------------------------------------------------
    async def execute(self, job: Job) -> SyncReport | None:
        """Run one claimed job and record its outcome; None when it was released unrun."""
        with structlog.contextvars.bound_contextvars(
            job_id=job.id,
            delivery_id=job.delivery_id,
            document_id=job.document_id,
            attempt=job.attempts,
            source=job.source.value,
        ):
            heartbeat = asyncio.create_task(self._heartbeat(job))
            try:
                report = await self._run(job)
            except asyncio.CancelledError:
                await asyncio.shield(self._release(job))
                raise
            finally:
                heartbeat.cancel()
            # Shielded: a shutdown must not cut the recording of a finished sync.
            self._events.emit(await asyncio.shield(self._record(job, report)))
            return report

    async def _run(self, job: Job) -> SyncReport:
        check_read = job.read_retries < self._options.read_retries
        not_before = job.not_before if check_read else None
        try:
            return await self._syncer.sync(job.document_id, not_before=not_before)
        except Exception as exc:  # a bug in one job must not stop the worker: record it
            log.exception("job_crashed")
            report = SyncReport(document_id=job.document_id)
            report.error = InternalError(f"internal error: {exc!r}")
            return report

    async def _heartbeat(self, job: Job) -> None:
        every = self._options.lease / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not await self._store.renew(job, until=self._clock() + self._options.lease):
                    log.warning("lease_lost")
                    return
            except StoreUnavailable as exc:
                log.warning("lease_renewal_failed", error=str(exc))

    async def _release(self, job: Job) -> None:
        try:
            await self._store.release(job, now=self._clock())
            log.info("job_released")
        except StoreUnavailable as exc:
            log.error("job_release_failed", error=str(exc))

    async def _record(self, job: Job, report: SyncReport) -> JobEnded:
        options = self._options
        outcome = judge(report, job, read_retries=options.read_retries)
        now = self._clock()
        verdict, scrubbed = outcome.verdict, self._scrub(outcome.message or "")
        if verdict is Verdict.RETRY and options.schedule.exhausted(job.attempts):
            verdict, scrubbed = Verdict.FAIL, f"gave up after {job.attempts} attempts: {scrubbed}"
        message = scrubbed or None
        delay: float | None = None
        try:
            if verdict is Verdict.DONE:
                kept = await self._store.finish(job, now=now, note=message)
            elif verdict is Verdict.RETRY_SOON:
                delay = options.read_retry_delay
                kept = await self._store.retry(
                    job, now=now, run_after=now + delay, error=message or "", read_retry=True
                )
            elif verdict is Verdict.RETRY:
                delay = options.schedule.delay(job.attempts)
                delay = max(delay, (outcome.not_before or now) - now)
                kept = await self._store.retry(
                    job, now=now, run_after=now + delay, error=message or ""
                )
            else:
                kept = await self._store.fail(job, now=now, error=message or "")
            unrecorded = None
        except StoreUnavailable as exc:
            kept, unrecorded = False, str(exc)
        return JobEnded(
            job,
            verdict,
            message,
            delay,
            stored=report.stored,
            reused=report.reused,
            kept=kept,
            unrecorded=unrecorded,
            errors=error_types(report),
        )
