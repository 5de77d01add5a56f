"""When the service wakes its worker's process: only when a wake-up can matter, and
never so that a queued job waits for the worker's poll."""

from __future__ import annotations

from cms_sync.worker_process import Wakeups


def test_a_busy_worker_is_not_woken_for_each_delivery() -> None:
    wakeups = Wakeups()
    assert [wakeups.queued() for _ in range(100)] == [False] * 100


def test_a_waiting_worker_is_woken_by_the_first_delivery_only() -> None:
    wakeups = Wakeups()
    assert wakeups.child_waits() is False  # nothing queued meanwhile: it sleeps
    assert wakeups.queued() is True
    assert wakeups.queued() is False  # already woken; it will look
    assert wakeups.queued() is False


def test_a_delivery_while_the_worker_said_it_waits_wakes_it_at_once() -> None:
    # The child found nothing and said so; a delivery came before the parent read that.
    wakeups = Wakeups()
    assert wakeups.queued() is False
    assert wakeups.child_waits() is True  # the missed delivery: wake it now
    assert wakeups.child_waits() is False  # its next empty claim: it just sleeps
    assert wakeups.queued() is True
