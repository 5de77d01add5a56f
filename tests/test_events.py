"""The worker's events: the log lines they make, and several listeners at once."""

from __future__ import annotations

from structlog.testing import capture_logs

from cms_sync.events import Fanout, JobEnded, LogEvents, Verdict
from cms_sync.jobs import Job, JobState


def job() -> Job:
    return Job(
        id=7,
        document_id="product-1",
        state=JobState.RUNNING,
        attempts=2,
        run_after=0.0,
        created_at=0.0,
        updated_at=0.0,
        lease_owner="w",
    )


def lines(event: JobEnded) -> list[dict[str, object]]:
    with capture_logs() as logs:
        LogEvents().job_ended(event)
    return [{k: v for k, v in line.items() if k != "log_level"} for line in logs]


def test_each_verdict_is_one_log_line_with_its_figures() -> None:
    assert lines(JobEnded(job(), Verdict.DONE, stored=3, reused=1)) == [
        {"event": "job_done", "stored": 3, "reused": 1, "note": None}
    ]
    assert lines(JobEnded(job(), Verdict.RETRY, "mainImage: HTTP 429", delay=12.345)) == [
        {"event": "job_retry", "error": "mainImage: HTTP 429", "delay": 12.3}
    ]
    assert lines(JobEnded(job(), Verdict.RETRY_SOON, "not readable yet", delay=2.0)) == [
        {"event": "job_waiting_for_document", "error": "not readable yet"}
    ]
    assert lines(JobEnded(job(), Verdict.FAIL, "refused")) == [
        {"event": "job_failed", "error": "refused"}
    ]


def test_an_outcome_not_kept_or_not_written_says_so() -> None:
    assert lines(JobEnded(job(), Verdict.DONE, kept=False))[-1] == {
        "event": "lease_lost_before_outcome",
        "verdict": "done",
    }
    assert lines(JobEnded(job(), Verdict.DONE, kept=False, unrecorded="disk gone")) == [
        {"event": "job_outcome_lost", "error": "disk gone"}
    ]


def test_fanout_tells_every_listener_in_order() -> None:
    heard: list[tuple[str, Verdict]] = []

    class Listener:
        def __init__(self, name: str) -> None:
            self.name = name

        def job_ended(self, event: JobEnded) -> None:
            heard.append((self.name, event.verdict))

    Fanout([Listener("log"), Listener("tally")]).job_ended(JobEnded(job(), Verdict.FAIL))
    assert heard == [("log", Verdict.FAIL), ("tally", Verdict.FAIL)]
