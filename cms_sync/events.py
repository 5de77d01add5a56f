"""What the worker reports as it goes, to whoever listens: the log, metrics, a tally.

The worker decides and records; it does not know who watches. It tells one
:class:`Events` what happened, and each listener (the log lines of
:class:`LogEvents`, the backfill's progress tally, metrics) implements the
same small interface. A new concern is a new listener, not a new call woven into each
branch of the worker. :class:`Fanout` hands each event to several.
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


class Events(Protocol):
    def job_ended(self, event: JobEnded) -> None: ...


class Fanout:
    """Every event to each listener, in order."""

    def __init__(self, listeners: Sequence[Events]) -> None:
        self._listeners = list(listeners)

    def job_ended(self, event: JobEnded) -> None:
        for listener in self._listeners:
            listener.job_ended(event)


class LogEvents:
    """The worker's events as log lines.

    Called inside the job's context, so each line carries its ``job_id``,
    ``document_id`` and ``attempt``.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("cms_sync.worker")

    def job_ended(self, event: JobEnded) -> None:
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
