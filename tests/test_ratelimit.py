"""Client-side rate limits: paced under Sanity's windows, shared by concurrent callers,
held back by a 429, and enough on their own to keep a burst of writes free of 429s."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import pytest

from cms_sync.emulators.faults import SANITY_LIMITS, Faults, rate_limited
from cms_sync.ratelimit import DEFAULT_RATES, Limit, RateLimiter
from cms_sync.sanity import SanityClient
from fakes import FakeContentLake
from wiring import no_wait_policy

pytestmark = pytest.mark.anyio
T = TypeVar("T")


class Time:
    """Virtual time for concurrent tasks: a clock, and a sleep that wakes its caller when
    every task is asleep and it is the earliest (so time passes only by waiting)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self._asleep: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._asleep, (self.now + max(seconds, 0.0), next(self._order), woken))
        await woken

    async def run(self, *calls: Awaitable[T]) -> list[T | BaseException]:
        tasks = [asyncio.ensure_future(call) for call in calls]
        while not all(task.done() for task in tasks):
            await asyncio.sleep(0)
            running = sum(1 for task in tasks if not task.done())
            if running and running == len(self._asleep):
                at, _, woken = heapq.heappop(self._asleep)
                self.now = max(self.now, at)
                woken.set_result(None)
        return [task.exception() or task.result() for task in tasks]


def limiter(t: Time, rates: dict[Limit, float], burst: int = 1) -> RateLimiter:
    return RateLimiter(rates, burst=burst, clock=t.clock, sleep=t.sleep)


async def waits(t: Time, limits: RateLimiter, *calls: tuple[Limit, ...]) -> list[float]:
    """Acquire for each call in turn (as one task)."""

    async def each() -> list[float]:
        return [await limits.acquire(*call) for call in calls]

    (result,) = await t.run(each())
    assert isinstance(result, list)
    return result


def most_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + 1) for t in times)


async def test_requests_are_spaced_so_no_second_sees_more_than_the_rate_plus_one() -> None:
    t = Time()
    limits = limiter(t, {Limit.SANITY_MUTATE: 20})
    sent: list[float] = []

    async def one() -> None:
        await limits.acquire(Limit.SANITY_MUTATE)
        sent.append(t.clock())

    await t.run(*(one() for _ in range(100)))
    assert len(sent) == 100
    assert most_in_any_second(sent) <= 21
    assert sent[-1] - sent[0] == pytest.approx(99 / 20)  # and no slower than the rate
    assert limits.stats[Limit.SANITY_MUTATE].waits == 99


async def test_a_burst_goes_at_once_then_the_rate_holds() -> None:
    t = Time()
    limits = limiter(t, {Limit.SANITY_CALL: 2}, burst=3)
    assert await waits(t, limits, *[(Limit.SANITY_CALL,)] * 5) == [0, 0, 0, 0.5, 0.5]
    assert t.clock() == pytest.approx(1_000 + 1.0)  # the 4th and 5th spaced 0.5 s apart


async def test_a_mutation_counts_against_the_call_limit_too() -> None:
    t = Time()
    limits = limiter(t, {Limit.SANITY_MUTATE: 100, Limit.SANITY_CALL: 4})
    got = await waits(t, limits, (Limit.SANITY_CALL,), (Limit.SANITY_MUTATE, Limit.SANITY_CALL))
    assert got == [0, pytest.approx(0.25)]


async def test_a_limit_without_a_rate_never_waits() -> None:
    t = Time()
    limits = limiter(t, {Limit.SANITY_MUTATE: 1})
    assert await waits(t, limits, *[(Limit.FILESTACK_STORE,)] * 50) == [0] * 50
    assert t.now == 1_000


async def test_a_429_holds_every_caller_back_for_its_retry_after() -> None:
    t = Time()
    limits = limiter(t, {Limit.SANITY_MUTATE: 20})
    assert await waits(t, limits, (Limit.SANITY_MUTATE,)) == [0]
    limits.throttled(Limit.SANITY_MUTATE, 2.0)
    assert await waits(t, limits, (Limit.SANITY_MUTATE,)) == [pytest.approx(2.0)]
    limits.throttled(Limit.SANITY_MUTATE, None)  # no retry-after: the rest of a second
    assert await waits(t, limits, (Limit.SANITY_MUTATE,)) == [pytest.approx(1.0)]
    assert limits.stats[Limit.SANITY_MUTATE].throttled == 2


@pytest.mark.parametrize("bad", [{Limit.SANITY_CALL: 0}, {Limit.SANITY_CALL: -5}])
def test_a_rate_that_is_not_positive_is_refused(bad: dict[Limit, float]) -> None:
    with pytest.raises(ValueError, match=r"sanity\.call"):
        RateLimiter(bad)


def test_the_defaults_are_under_sanitys_published_limits() -> None:
    mutate, calls = SANITY_LIMITS
    assert DEFAULT_RATES[Limit.SANITY_MUTATE] + 1 <= mutate
    assert DEFAULT_RATES[Limit.SANITY_CALL] + 1 <= calls


async def burst_of_patches(limiter: RateLimiter | None, t: Time) -> tuple[FakeContentLake, int]:
    """60 writers patching at once against a lake enforcing Sanity's limits on ``t``."""
    docs = {f"product-{i}": {"_id": f"product-{i}", "_type": "product"} for i in range(60)}
    faults = Faults(rate_limits=SANITY_LIMITS, clock=t.clock)
    lake = FakeContentLake(documents=docs, faults=faults)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lake), base_url="http://lake/v2025-02-19"
    ) as http:
        http.headers["authorization"] = f"Bearer {lake.token}"
        client = SanityClient(
            http, dataset="production", retry=no_wait_policy(attempts=1), limiter=limiter
        )

        async def patch(doc_id: str) -> Any:
            return await client.mutate([{"patch": {"id": doc_id, "set": {"seen": True}}}])

        outcomes = await t.run(*(patch(i) for i in docs))
    return lake, sum(1 for o in outcomes if isinstance(o, Exception))


async def test_the_limiter_alone_keeps_a_burst_of_writes_free_of_429s() -> None:
    t = Time()
    lake, failed = await burst_of_patches(limiter(t, dict(DEFAULT_RATES)), t)
    assert failed == 0 and lake.faults is not None and "429" not in lake.faults.injected
    assert all(d.get("seen") for d in lake.documents.values())
    assert t.now - 1_000 == pytest.approx(59 / 20)


async def test_without_it_the_same_burst_meets_429s() -> None:
    t = Time()
    lake, failed = await burst_of_patches(None, t)
    assert lake.faults is not None and lake.faults.injected["429"] == failed == 60 - 25


async def test_a_429_from_sanity_is_charged_to_the_limit_of_the_request() -> None:
    t = Time()
    limits = limiter(t, dict(DEFAULT_RATES))
    lake = FakeContentLake(documents={"product-1": {"_id": "product-1", "_type": "product"}})
    lake.scripted.append(lambda _: rate_limited())
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lake), base_url="http://lake/v2025-02-19"
    ) as http:
        http.headers["authorization"] = f"Bearer {lake.token}"
        client = SanityClient(http, dataset="production", retry=no_wait_policy(), limiter=limits)
        (result,) = await t.run(client.mutate([{"patch": {"id": "product-1", "set": {"a": 1}}}]))
    assert not isinstance(result, BaseException)
    assert limits.stats[Limit.SANITY_MUTATE].throttled == 1
    assert Limit.SANITY_CALL not in limits.stats or not limits.stats[Limit.SANITY_CALL].throttled
    assert t.now - 1_000 == pytest.approx(1.0)  # the retry waited out the window


async def test_ready_waits_for_the_next_slot_without_taking_it() -> None:
    t = Time()
    limits = limiter(t, {Limit.SANITY_MUTATE: 20, Limit.SANITY_CALL: 400})
    start = t.now

    async def ready_then_go() -> float:
        await limits.acquire(Limit.SANITY_MUTATE)
        await limits.ready(Limit.SANITY_MUTATE, Limit.SANITY_CALL)
        waited_for_ready = t.now - start
        return waited_for_ready + await limits.acquire(Limit.SANITY_MUTATE)

    (total,) = await t.run(ready_then_go())
    assert total == pytest.approx(1 / 20)  # ready waited the spacing; the take was free
    await limits.ready(Limit.FILESTACK_STORE)  # not limited: no wait
    assert t.now == pytest.approx(start + 1 / 20)
