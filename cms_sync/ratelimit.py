"""Client-side rate limits: respect the remote's limits by design, not by collecting 429s.

Sanity limits each client IP to 25 mutate requests and 500 API calls a second, and answers
429 "until the second ends" above that. One :class:`RateLimiter` per process is given to
both clients; every request, retries included, first waits for a token of each limit
it counts against (a mutation counts as a call too).

Each limit is a token bucket kept as GCRA (a "theoretical arrival time"): requests are
spaced ``1 / rate`` apart, with ``burst`` of them allowed at once. With the default burst
of 1, any one-second window sees at most ``rate + 1`` requests, so 20/s stays under 25/s
however Sanity aligns its windows. Waiting reserves a slot first, so concurrent callers
queue in arrival order instead of racing for the same token.

A 429 pauses the limit it hit: the remote said the window is spent, so every caller
waits the ``retry-after`` (or one second) rather than each finding out on its own.
The limits are per process: replicas that share an IP share Sanity's limits, so divide
the rates among them.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

Sleep = Callable[[float], Awaitable[None]]


class Limit(enum.StrEnum):
    SANITY_CALL = "sanity.call"  # every Content Lake request
    SANITY_MUTATE = "sanity.mutate"  # mutate requests (also calls)
    FILESTACK_STORE = "filestack.store"  # /process store requests


#: Sanity's published limits are 25 mutate requests/s and 500 calls/s per client IP.
DEFAULT_RATES: Mapping[Limit, float] = {Limit.SANITY_MUTATE: 20.0, Limit.SANITY_CALL: 400.0}


@dataclass
class _Bucket:
    rate: float
    burst: int = 1
    tat: float = float("-inf")  # theoretical arrival time: the next slot, burst aside

    @property
    def _tolerance(self) -> float:
        return (self.burst - 1) / self.rate

    def reserve(self, now: float) -> float:
        """Take the next slot; how long to wait for it."""
        go = max(now, self.tat - self._tolerance)
        self.tat = max(self.tat, go) + 1.0 / self.rate
        return go - now

    def next_slot(self) -> float:
        """When the next request could go."""
        return self.tat - self._tolerance

    def pause(self, until: float) -> None:
        """No request before ``until``."""
        self.tat = max(self.tat, until + self._tolerance)


@dataclass
class LimitStats:
    """What the limits did: for progress displays and metrics."""

    waits: int = 0  # requests that had to wait for a token
    waited: float = 0.0  # seconds spent waiting, summed over requests
    throttled: int = 0  # 429s seen all the same


@dataclass
class RateLimiter:
    """Token buckets by :class:`Limit`; a limit without a rate is not limited."""

    rates: Mapping[Limit, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    burst: int = 1
    clock: Callable[[], float] = time.monotonic
    sleep: Sleep = asyncio.sleep
    stats: dict[Limit, LimitStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("a rate limit's burst is at least 1")
        for limit, rate in self.rates.items():
            if not rate > 0:
                raise ValueError(f"{limit.value}: a rate must be above 0 per second")
        self._buckets = {limit: _Bucket(rate, self.burst) for limit, rate in self.rates.items()}

    @classmethod
    def unlimited(cls) -> RateLimiter:
        return cls(rates={})

    async def acquire(self, *limits: Limit) -> float:
        """Wait until a request counted against every one of ``limits`` may go; the wait."""
        now = self.clock()
        wait = 0.0
        for limit in limits:
            bucket = self._buckets.get(limit)
            if bucket is not None:
                wait = max(wait, bucket.reserve(now))
        if wait > 0:
            for limit in limits:
                if limit in self._buckets:
                    stats = self.stats.setdefault(limit, LimitStats())
                    stats.waits += 1
                    stats.waited += wait
            await self.sleep(wait)
        return wait

    async def ready(self, *limits: Limit) -> None:
        """Wait until a request under ``limits`` could go at once, reserving nothing (a
        batch is made up after this, so that what queued during the wait goes too)."""
        now = self.clock()
        wait = max(
            (self._buckets[limit].next_slot() - now for limit in limits if limit in self._buckets),
            default=0.0,
        )
        if wait > 0:
            await self.sleep(wait)

    def throttled(self, limit: Limit, retry_after: float | None) -> None:
        """The remote answered 429 to a request under ``limit``: hold everyone back."""
        self.stats.setdefault(limit, LimitStats()).throttled += 1
        bucket = self._buckets.get(limit)
        if bucket is not None:
            bucket.pause(self.clock() + (retry_after if retry_after is not None else 1.0))
