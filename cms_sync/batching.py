"""Coalesce concurrent calls into batched requests, without a timer.

Many jobs each want one read or one write at nearly the same moment. A :class:`Batcher`
queues those calls and sends them as few requests: a batch leaves as soon as one of its
``senders`` is free, and takes everything queued by then (up to ``max_size`` items,
``max_weight`` in all). So at low load a call goes alone and waits for nothing (no
linger), and under load, while every sender is busy or waits for a rate-limit token
(``ready``), calls pile up and the next request carries them all. The batch size follows
the load by itself.

The send function answers each item on its own (a result, or an exception for that item
only); if it raises, every item of the batch gets that error. A caller cancelled before
its item was taken is never sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Answers one batch: a result or an exception per item, in the items' order.
Send = Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]]


@dataclass
class BatchStats:
    """What the batcher did: for benchmarks and metrics."""

    batches: int = 0
    items: int = 0
    largest: int = 0


class Batcher(Generic[T, R]):
    def __init__(
        self,
        send: Send[T, R],
        *,
        max_size: int,
        senders: int = 1,
        max_weight: int | None = None,
        weight: Callable[[T], int] | None = None,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """
        Args:
            max_weight: the most ``weight`` one batch may carry (a batch always takes at
                least one item, however heavy).
            ready: awaited by a free sender before it takes its batch (e.g. until a rate
                limit would let the request go), so what queues meanwhile goes with it.
        """
        if max_size < 1 or senders < 1:
            raise ValueError("a batcher needs max_size and senders of at least 1")
        self._send = send
        self._max_size = max_size
        self._senders = senders
        self._max_weight = max_weight
        self._weight = weight or (lambda _: 1)
        self._ready = ready
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = BatchStats()

    @property
    def pending(self) -> int:
        """Calls queued and not yet taken into a batch."""
        return sum(1 for _, future in self._queue if not future.done())

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its own answer."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_senders()
        return await future

    def _start_senders(self) -> None:
        while self._active < self._senders and self.pending:
            self._active += 1
            task = asyncio.create_task(self._run_sender(), name="cms-sync-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_sender(self) -> None:
        try:
            if self._ready is not None:
                await self._ready()
            batch = self._take()
            if batch:
                await self._deliver(batch)
        finally:
            self._active -= 1
            self._start_senders()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        weight = 0
        while self._queue and len(batch) < self._max_size:
            item, future = self._queue[0]
            if future.done():  # its caller was cancelled: never send it
                self._queue.popleft()
                continue
            item_weight = self._weight(item)
            if batch and self._max_weight is not None and weight + item_weight > self._max_weight:
                break
            self._queue.popleft()
            batch.append((item, future))
            weight += item_weight
        if batch:
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
        return batch

    async def _deliver(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._send([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(answers)} answers")
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: each caller sees why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled mid-send: the callers must not hang
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
