"""Retry policy as data: which errors are safe to retry, how long to wait, how to sleep.

Each outbound call gets a tenacity ``AsyncRetrying`` built from a :class:`RetryPolicy`
and a predicate saying what is safe for that call. The waits follow a
:class:`~cms_sync.backoff.Backoff` (full jitter); ``sleep`` is injected so tests run
retries without waiting; a ``retry-after`` from the server wins over the backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from cms_sync.backoff import Backoff
from cms_sync.errors import (
    ConnectError,
    RateLimited,
    RejectedError,
    RemoteError,
    TransportError,
    UnavailableError,
)

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def request_backoff(*, attempts: int = 4, initial: float = 0.5) -> Backoff:
    """Within one call: up to ``attempts`` tries, waits of up to ``initial``, doubling to
    8 s, with full jitter (many requests failing together must not retry together)."""
    return Backoff(base=initial, maximum=8.0, max_attempts=attempts, full_jitter=True)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of one request along a backoff, honouring ``retry-after``."""

    backoff: Backoff = field(default_factory=request_backoff)
    #: Longest ``retry-after`` honoured; a server asking for more gets this much.
    max_retry_after: float = 30.0
    sleep: Sleep = asyncio.sleep

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RemoteError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return self.backoff.delay(state.attempt_number)

    def retrying(self, safe: Callable[[BaseException], bool], *, operation: str) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "request_retry",
                operation=operation,
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 3),
                error=str(exc),
            )

        return AsyncRetrying(
            stop=stop_after_attempt(self.backoff.max_attempts),
            wait=self.wait,
            retry=retry_if_exception(safe),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )


def query_is_safe(exc: BaseException) -> bool:
    """A read can be repeated after any transport failure, 429 or 5xx."""
    return isinstance(exc, TransportError | UnavailableError)


def guarded_mutation_is_safe(exc: BaseException) -> bool:
    """An ``ifRevisionID`` patch: 429/5xx, or a request that was never sent.

    If a first attempt did apply, the retry fails with a revision conflict, which the
    sync answers by refetching: so the guard makes the retry safe.
    """
    return isinstance(exc, UnavailableError | ConnectError)


def store_is_safe(exc: BaseException) -> bool:
    """A Filestack store is not idempotent: retry only what was never sent."""
    return isinstance(exc, ConnectError)


def store_may_have_happened(exc: BaseException) -> bool:
    """Whether a store that raised ``exc`` may still have stored the file.

    Certainly not when the request was never sent, was refused (4xx), or was over the
    rate limit (429). Anything else (a 5xx from a gateway, no answer in time, a 2xx
    without a handle, an unknown failure) may have come after the file was stored.
    """
    return not isinstance(exc, ConnectError | RejectedError | RateLimited)
