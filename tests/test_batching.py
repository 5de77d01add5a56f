"""The batcher: batches follow the load, each caller gets its own answer, nothing waits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cms_sync.batching import Batcher

pytestmark = pytest.mark.anyio


class Remote:
    """A send function that records its batches and can hold them at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.sent = asyncio.Event()  # cleared by a test to see the next batch leave
        self.fail_items: set[int] = set()
        self.fail_batch: Exception | None = None

    async def send(self, items: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.entered.set()
        self.sent.set()
        await self.gate.wait()
        if self.fail_batch is not None:
            raise self.fail_batch
        return [ValueError(f"bad {i}") if i in self.fail_items else i * 10 for i in items]


async def hold_first_batch(remote: Remote, batcher: Batcher[int, int]) -> asyncio.Task[int]:
    """Submit 0 and wait until its batch is at the remote, held there."""
    remote.gate.clear()
    first = asyncio.create_task(batcher.submit(0))
    await remote.entered.wait()
    return first


async def test_a_lone_call_goes_at_once_and_alone() -> None:
    remote = Remote()
    batcher = Batcher(remote.send, max_size=50)
    assert await batcher.submit(7) == 70
    assert await batcher.submit(8) == 80
    assert remote.batches == [[7], [8]]


async def test_calls_queued_while_every_sender_is_busy_go_in_the_next_batch() -> None:
    remote = Remote()
    batcher = Batcher(remote.send, max_size=50, senders=1)
    first = await hold_first_batch(remote, batcher)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert batcher.pending == 5 and remote.batches == [[0]]
    remote.gate.set()
    assert [await first, *[await t for t in rest]] == [0, 10, 20, 30, 40, 50]
    assert remote.batches == [[0], [1, 2, 3, 4, 5]]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest) == (2, 6, 5)


async def test_a_second_sender_goes_while_the_first_is_busy() -> None:
    remote = Remote()
    batcher = Batcher(remote.send, max_size=50, senders=2)
    first = await hold_first_batch(remote, batcher)
    remote.sent.clear()
    second = asyncio.create_task(batcher.submit(1))
    await remote.sent.wait()  # the second sender takes it: no wait behind the first
    remote.gate.set()
    assert (await first, await second) == (0, 10)
    assert remote.batches == [[0], [1]]


async def test_batches_are_bounded_in_size_and_weight() -> None:
    remote = Remote()
    batcher = Batcher(remote.send, max_size=3, max_weight=10, weight=lambda i: i)
    first = await hold_first_batch(remote, batcher)
    items = [1, 2, 3, 4, 9, 20, 1]
    rest = [asyncio.create_task(batcher.submit(i)) for i in items]
    await asyncio.sleep(0)
    remote.gate.set()
    assert [await t for t in rest] == [i * 10 for i in items]
    await first
    # Three at most; 4 would put 1+2+3 over 10; 20 alone is over but goes (alone).
    assert remote.batches == [[0], [1, 2, 3], [4], [9], [20], [1]]


async def test_an_item_error_reaches_only_its_caller() -> None:
    remote = Remote()
    remote.fail_items = {2}
    batcher = Batcher(remote.send, max_size=50)
    first = await hold_first_batch(remote, batcher)
    rest = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    remote.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert outcomes[:2] == [0, 10] and outcomes[3] == 30
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "bad 2"


async def test_a_failed_batch_fails_each_of_its_callers_and_no_other() -> None:
    remote = Remote()
    batcher = Batcher(remote.send, max_size=50)
    first = await hold_first_batch(remote, batcher)
    rest = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    remote.fail_batch = ConnectionError("down")
    remote.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    remote.fail_batch = None
    assert await batcher.submit(5) == 50  # the batcher carries on


async def test_a_caller_cancelled_before_its_batch_left_is_never_sent() -> None:
    remote = Remote()
    batcher = Batcher(remote.send, max_size=50)
    first = await hold_first_batch(remote, batcher)
    gone = asyncio.create_task(batcher.submit(1))
    kept = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    remote.gate.set()
    assert (await first, await kept) == (0, 20)
    assert gone.cancelled()
    assert remote.batches == [[0], [2]]


async def test_calls_made_while_a_sender_waits_to_be_ready_go_with_it() -> None:
    remote = Remote()
    ready = asyncio.Event()

    async def wait_ready() -> None:
        await ready.wait()

    batcher = Batcher(remote.send, max_size=50, ready=wait_ready)
    calls = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    calls.append(asyncio.create_task(batcher.submit(3)))  # while the sender waits
    await asyncio.sleep(0)
    assert remote.batches == []
    ready.set()
    assert [await c for c in calls] == [10, 20, 30]
    assert remote.batches == [[1, 2, 3]]


def test_a_batcher_needs_room_for_one_item() -> None:
    async def send(items: Sequence[int]) -> list[int | Exception]:
        return list(items)

    with pytest.raises(ValueError, match="at least 1"):
        Batcher(send, max_size=0)
