"""The worker's events: the log lines they make, and several listeners at once."""

from __future__ import annotations

from structlog.testing import capture_logs

from cms_sync.events import (
    CallEnded,
    DeliveryEnded,
    DeliveryOutcome,
    Event,
    Fanout,
    JobEnded,
    LogEvents,
    PatchConflict,
    Remote,
    StoreUnanswered,
    SyncEnded,
    Verdict,
)
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


def lines(event: Event) -> list[dict[str, object]]:
    with capture_logs() as logs:
        LogEvents().emit(event)
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

        def emit(self, event: Event) -> None:
            assert isinstance(event, JobEnded)
            heard.append((self.name, event.verdict))

    Fanout([Listener("log"), Listener("tally")]).emit(JobEnded(job(), Verdict.FAIL))
    assert heard == [("log", Verdict.FAIL), ("tally", Verdict.FAIL)]


def test_the_sync_and_the_deliveries_keep_their_log_lines() -> None:
    assert lines(SyncEnded("p", "r2", patched=True, stored=2, reused=1)) == [
        {"event": "document_patched", "rev": "r2", "slots": 3}
    ]
    assert lines(SyncEnded("p", "r2", patched=False)) == [
        {"event": "document_in_sync", "rev": "r2"}
    ]
    # Slots failed and nothing was written: the job's line says why, not "in sync".
    assert lines(SyncEnded("p", "r2", patched=False, failed_slots=1)) == []
    assert lines(SyncEnded("p", None, patched=False, error="gone", error_type="X")) == [
        {"event": "sync_failed", "error": "gone", "error_type": "X"}
    ]
    assert lines(PatchConflict("p", "r2", 1)) == [
        {"event": "patch_conflict", "rev": "r2", "attempt": 1}
    ]
    assert lines(StoreUnanswered("image-a", 2, "no answer")) == [
        {"event": "store_unanswered", "asset_id": "image-a", "attempts": 2, "error": "no answer"}
    ]
    assert lines(DeliveryEnded(DeliveryOutcome.QUEUED, queued=("a",), coalesced=("b",))) == [
        {"event": "delivery_queued", "queued": ["a"], "coalesced": ["b"]}
    ]
    assert lines(DeliveryEnded(DeliveryOutcome.UNAUTHORIZED, "invalid signature: stale")) == [
        {
            "event": "delivery_rejected",
            "outcome": "unauthorized",
            "reason": "invalid signature: stale",
        }
    ]
    assert lines(DeliveryEnded(DeliveryOutcome.UNAVAILABLE, "disk full")) == [
        {"event": "delivery_not_stored", "error": "disk full"}
    ]
    assert lines(CallEnded(Remote.SANITY, "query", 0.01, 200)) == []  # metrics only
