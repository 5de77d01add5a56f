"""The one backoff model: the job schedule, the per-asset backoff and request retries."""

from __future__ import annotations

import random

import pytest

from cms_sync.backoff import Backoff
from cms_sync.retry import request_backoff


def test_the_default_job_schedule_spans_about_an_hour() -> None:
    schedule = Backoff()
    assert [schedule.nominal_delay(n) for n in range(1, 5)] == [10, 20, 40, 80]
    assert schedule.nominal_delay(20) == 900
    assert 50 * 60 <= schedule.span() <= 75 * 60
    assert not schedule.exhausted(10) and schedule.exhausted(11)


def test_proportional_jitter_stays_within_its_band() -> None:
    schedule = Backoff(rng=random.Random(7))
    delays = [schedule.delay(3) for _ in range(200)]
    assert all(32 <= d <= 48 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100


def test_full_jitter_spreads_from_zero_to_the_nominal_delay() -> None:
    backoff = Backoff(base=0.5, maximum=8, max_attempts=4, full_jitter=True, rng=random.Random(3))
    delays = [backoff.delay(4) for _ in range(400)]  # nominal 4 s
    assert all(0 <= d <= 4 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 3.5


def test_request_retries_wait_at_most_eight_seconds() -> None:
    backoff = request_backoff(attempts=6, initial=0.5)
    assert backoff.max_attempts == 6 and backoff.full_jitter
    assert [backoff.nominal_delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]


@pytest.mark.parametrize(
    "bad",
    [
        {"base": -1},
        {"factor": 0.5},
        {"max_attempts": 0},
        {"jitter": 1.5},
    ],
)
def test_a_backoff_that_cannot_work_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"backoff|jitter"):
        Backoff(**bad)  # type: ignore[arg-type]
