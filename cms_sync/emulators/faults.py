"""Fault injection for both emulators: latency, error rates, hangs, lost answers, rate limits.

A :class:`Faults` wraps a handler. Random faults come from a seeded generator, so a run
can be repeated. Rate limits follow Sanity's published ones (25 mutate requests/s and
500 calls/s per client): over the limit a request gets 429 until the second ends.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from cms_sync.emulators.http import Handler, json_response

RATE_LIMITED = {
    "statusCode": 429,
    "error": "Too Many Requests",
    "message": "API rate limit exceeded",
}
_GATEWAY = {
    502: {
        "statusCode": 502,
        "error": "Bad Gateway",
        "message": "An invalid response was received from the upstream server",
    },
    503: {"statusCode": 503, "error": "Service Unavailable", "message": "Service Unavailable"},
    504: {"statusCode": 504, "error": "Gateway Timeout", "message": "Gateway Timeout"},
}


def error_response(status: int) -> httpx.Response:
    """A gateway-style error body, as Sanity's edge (and most proxies) answer."""
    body = _GATEWAY.get(status, {"statusCode": status, "error": "Error", "message": "injected"})
    return json_response(status, body)


@dataclass
class Faults:
    """What goes wrong, and how often. All rates are probabilities per request."""

    #: Seconds added before each answer.
    latency: float = 0.0
    #: Make ``latency`` the whole time to the answer, the emulator's own work included
    #: (a benchmark's 250 ms store then answers at 250 ms however busy the emulator is).
    latency_is_total: bool = False
    #: Status code -> rate: answer that status instead of doing the work.
    statuses: dict[int, float] = field(default_factory=dict)
    #: Rate of requests that hang (no answer) for ``hang_seconds``, then hang up.
    hang: float = 0.0
    hang_seconds: float = 60.0
    #: Rate of requests whose work is done but whose answer is lost: a 502, or a hang-up.
    lose: float = 0.0
    #: Enforce Sanity's limits per second: ``(mutate requests, all calls)``; None for none.
    rate_limits: tuple[int, int] | None = None
    seed: int = 2026
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = time.sleep
    #: Counts of faults injected, by kind ("latency" excluded): read them in tests and benches.
    injected: dict[str, int] = field(default_factory=dict)
    _random: random.Random = field(init=False)
    _window: int = field(default=-1, init=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)  # noqa: S311 - repeatable faults, not secrets

    def close(self) -> None:
        """Release every hanging request."""
        self._stop.set()

    def wrap(self, handler: Handler, *, is_mutation: Callable[[httpx.Request], bool]) -> Handler:
        def faulty(request: httpx.Request) -> httpx.Response:
            started = self.clock()
            if self.latency and not self.latency_is_total:
                self.sleep(self.latency)
            try:
                return self._answer(handler, request, is_mutation(request))
            finally:
                remaining = self.latency - (self.clock() - started)
                if self.latency_is_total and remaining > 0:
                    self.sleep(remaining)

        return faulty

    def _answer(self, handler: Handler, request: httpx.Request, mutation: bool) -> httpx.Response:
        early = self._before(mutation)
        if early == "hang":
            self._stop.wait(self.hang_seconds)
            raise httpx.ReadTimeout("emulated hang", request=request)
        if isinstance(early, int):
            return rate_limited() if early == 429 else error_response(early)
        answer = handler(request)
        if self._chance("lose", self.lose) and answer.status_code < 300:
            if self._random.random() < 0.5:
                return error_response(502)
            raise httpx.RemoteProtocolError("emulated lost answer", request=request)
        return answer

    def _before(self, mutation: bool) -> str | int | None:
        with self._lock:
            if self.rate_limits is not None and self._over_limit(mutation):
                self.injected["429"] = self.injected.get("429", 0) + 1
                return 429
            roll = self._random.random()
            for status, rate in sorted(self.statuses.items()):
                if roll < rate:
                    self.injected[str(status)] = self.injected.get(str(status), 0) + 1
                    return status
                roll -= rate
            if self._random.random() < self.hang:
                self.injected["hang"] = self.injected.get("hang", 0) + 1
                return "hang"
        return None

    def _over_limit(self, mutation: bool) -> bool:
        assert self.rate_limits is not None
        second = math.floor(self.clock())
        if second != self._window:
            self._window, self._counts = second, {}
        mutate_limit, call_limit = self.rate_limits
        calls = self._counts.get("calls", 0)
        mutates = self._counts.get("mutate", 0)
        if calls >= call_limit or (mutation and mutates >= mutate_limit):
            return True
        self._counts["calls"] = calls + 1
        if mutation:
            self._counts["mutate"] = mutates + 1
        return False

    def _chance(self, kind: str, rate: float) -> bool:
        with self._lock:
            hit = rate > 0 and self._random.random() < rate
            if hit:
                self.injected[kind] = self.injected.get(kind, 0) + 1
            return hit


#: Sanity's limits, per second: 25 mutate requests and 500 API calls.
SANITY_LIMITS = (25, 500)


def rate_limited() -> httpx.Response:
    """Sanity's 429 (``retry-after`` is unverified for Sanity; sent, as clients honour it)."""
    return json_response(429, RATE_LIMITED, headers={"retry-after": "1"})
