"""What the service reports as it goes, to whoever listens: the log, metrics, a tally.

The webhook handler, the worker, the syncer and the two HTTP clients decide and record;
they do not know who watches. Each tells one :class:`Events` what happened, as a small
frozen value, and each listener (the log lines of :class:`LogEvents`, the Prometheus
counters of :mod:`cms_sync.metrics`, the backfill's progress tally) takes the events it
cares about and ignores the rest. A new concern is a new listener, not a new call woven
into each branch of the code that decides. :class:`Fanout` hands each event to several.

Listeners run inline on the event loop: they count and write, and never wait.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from cms_sync.jobs import Job


class Verdict(enum.Enum):
    DONE = "done"
    RETRY = "retry"  # back off along the retry schedule
    RETRY_SOON = "retry soon"  # the document is not readable yet: a short wait
    FAIL = "fail"  # permanent: the dead-letter list


@dataclass(frozen=True)
class JobEnded:
    """One run of a job, and what was recorded for it."""

    job: Job
    verdict: Verdict
    #: Why it did not simply succeed (secrets scrubbed), or a note on a success.
    message: str | None = None
    #: Seconds until the retry, for :attr:`Verdict.RETRY` and :attr:`Verdict.RETRY_SOON`.
    delay: float | None = None
    stored: int = 0
    reused: int = 0
    #: False when another worker holds the job now: the outcome was not written.
    kept: bool = True
    #: Why the outcome could not be written at all (the job runs again when its lease ends).
    unrecorded: str | None = None
    #: The class of each error of the run: the document's, then each failed slot's.
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncEnded:
    """One sync of one document (from the worker or ``cms-sync sync``)."""

    document_id: str
    rev: str | None
    patched: bool
    stored: int = 0
    reused: int = 0
    failed_slots: int = 0
    #: Why the document could not be synced at all, and the error's class.
    error: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class PatchConflict:
    """The document changed between the read and the patch: it is read again."""

    document_id: str
    rev: str
    attempt: int


@dataclass(frozen=True)
class AssetStored:
    asset_id: str
    handle: str
    size: int | None


@dataclass(frozen=True)
class StoreUnanswered:
    """A store whose answer was lost: Filestack may hold a copy (an ambiguous store)."""

    asset_id: str
    attempts: int
    error: str


class Remote(enum.StrEnum):
    SANITY = "sanity"
    FILESTACK = "filestack"


@dataclass(frozen=True)
class CallEnded:
    """One HTTP request to Sanity or Filestack (each retry is its own call)."""

    remote: Remote
    operation: str  # query | mutate | store
    seconds: float
    #: The answer's status, or None when there was no complete answer.
    status: int | None
    #: The class of the transport error when there was no answer.
    error_type: str | None = None


class DeliveryOutcome(enum.StrEnum):
    QUEUED = "queued"  # 202: on disk
    DUPLICATE = "duplicate"  # 200: the idempotency key was seen before
    IGNORED = "ignored"  # 200: nothing to queue (another type, a draft, a delete)
    UNAUTHORIZED = "unauthorized"  # 401: the signature did not verify
    MALFORMED = "malformed"  # 400
    TOO_LARGE = "too_large"  # 413
    UNAVAILABLE = "unavailable"  # 503: the job store could not be written


@dataclass(frozen=True)
class DeliveryEnded:
    """One Sanity webhook delivery, as it was answered."""

    outcome: DeliveryOutcome
    reason: str | None = None
    queued: tuple[str, ...] = ()
    coalesced: tuple[str, ...] = ()
    ignored: tuple[dict[str, str], ...] = ()


class NoticeOutcome(enum.StrEnum):
    """How a Filestack notification was answered (all but the last five are 200s)."""

    RECORDED = "recorded"  # a lost answer completed: the asset recorded, documents queued
    KNOWN = "known"  # the asset's recorded handle
    ORPHAN = "orphan"  # another handle of a recorded asset
    UNKNOWN = "unknown"  # an asset this store never began a store of
    DUPLICATE = "duplicate"  # seen before
    IGNORED = "ignored"  # not a store, or not ours
    UNAUTHORIZED = "unauthorized"  # 401
    MALFORMED = "malformed"  # 400
    TOO_LARGE = "too_large"  # 413
    UNAVAILABLE = "unavailable"  # 503


@dataclass(frozen=True)
class NoticeEnded:
    """One Filestack webhook notification, as it was answered."""

    outcome: NoticeOutcome
    reason: str | None = None
    asset_id: str | None = None
    handle: str | None = None
    queued: tuple[str, ...] = ()


Event = (
    JobEnded
    | SyncEnded
    | PatchConflict
    | AssetStored
    | StoreUnanswered
    | CallEnded
    | DeliveryEnded
    | NoticeEnded
)


class Events(Protocol):
    def emit(self, event: Event) -> None: ...


class Silent:
    """Hears nothing: for callers that want no reports."""

    def emit(self, event: Event) -> None:
        pass


class Fanout:
    """Every event to each listener, in order."""

    def __init__(self, listeners: Sequence[Events]) -> None:
        self._listeners = list(listeners)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            listener.emit(event)


class LogEvents:
    """The events as log lines.

    Called inside the context of the delivery or job, so each line carries its
    ``delivery_id``, ``job_id``, ``document_id``, ``attempt`` and ``source``. Calls to
    the remotes are not logged (their failures are, as the sync's errors).
    """

    def __init__(self) -> None:
        # Assembled on first use and kept (the configuration is set by then): a plain
        # lazy logger assembles itself again for every line, a cost paid per delivery.
        self._log = structlog.wrap_logger(
            None, logger_factory_args=("cms_sync",), cache_logger_on_first_use=True
        )

    def emit(self, event: Event) -> None:
        log = self._log
        match event:
            case DeliveryEnded():  # first: one for every delivery
                self._delivery_ended(event)
            case JobEnded():
                self._job_ended(event)
            case SyncEnded(error=str(error)):
                log.warning("sync_failed", error=error, error_type=event.error_type)
            case SyncEnded(patched=True):
                log.info("document_patched", rev=event.rev, slots=event.stored + event.reused)
            case SyncEnded(failed_slots=0):
                log.info("document_in_sync", rev=event.rev)
            case PatchConflict():
                log.info("patch_conflict", rev=event.rev, attempt=event.attempt)
            case AssetStored():
                log.info(
                    "asset_stored", asset_id=event.asset_id, handle=event.handle, size=event.size
                )
            case StoreUnanswered():
                log.warning(
                    "store_unanswered",
                    asset_id=event.asset_id,
                    attempts=event.attempts,
                    error=event.error,
                )
            case NoticeEnded():
                self._notice_ended(event)

    def _job_ended(self, event: JobEnded) -> None:
        log = self._log
        if event.unrecorded is not None:
            # The lease will run out and the job run again: the sync is idempotent.
            log.error("job_outcome_lost", error=event.unrecorded)
            return
        if event.verdict is Verdict.DONE:
            log.info("job_done", stored=event.stored, reused=event.reused, note=event.message)
        elif event.verdict is Verdict.RETRY_SOON:
            log.info("job_waiting_for_document", error=event.message)
        elif event.verdict is Verdict.RETRY:
            log.warning("job_retry", error=event.message, delay=round(event.delay or 0.0, 1))
        else:
            log.error("job_failed", error=event.message)
        if not event.kept:
            log.warning("lease_lost_before_outcome", verdict=event.verdict.value)

    def _delivery_ended(self, event: DeliveryEnded) -> None:
        log = self._log
        match event.outcome:
            case DeliveryOutcome.QUEUED:
                log.info(
                    "delivery_queued", queued=list(event.queued), coalesced=list(event.coalesced)
                )
            case DeliveryOutcome.DUPLICATE:
                log.info("delivery_duplicate")
            case DeliveryOutcome.IGNORED:
                log.info("delivery_ignored", ignored=list(event.ignored))
            case DeliveryOutcome.UNAVAILABLE:
                log.error("delivery_not_stored", error=event.reason)
            case _:
                log.warning("delivery_rejected", outcome=event.outcome.value, reason=event.reason)

    def _notice_ended(self, event: NoticeEnded) -> None:
        fields = {"asset_id": event.asset_id, "handle": event.handle, "reason": event.reason}
        match event.outcome:
            case NoticeOutcome.RECORDED:
                self._log.info("store_confirmed", queued=list(event.queued), **fields)
            case NoticeOutcome.ORPHAN:
                self._log.warning("orphan_found", **fields)
            case NoticeOutcome.UNAVAILABLE:
                self._log.error("notice_not_stored", error=event.reason)
            case NoticeOutcome.UNAUTHORIZED | NoticeOutcome.MALFORMED | NoticeOutcome.TOO_LARGE:
                self._log.warning("notice_rejected", outcome=event.outcome.value, **fields)
            case _:
                self._log.info("notice_" + event.outcome.value, **fields)
