"""Exponential backoff with jitter: the one model behind every wait before trying again.

A request retried within one call (``retry.RetryPolicy``), a job put back in the queue
(the worker's schedule) and an asset whose store went unanswered (the sync's per-asset
backoff) all wait along a :class:`Backoff`. Two kinds of jitter:

- proportional (``jitter=0.2``): each delay is its nominal value scaled by a random
  factor in ``[1 - jitter, 1 + jitter]``; for schedules an operator reads ("about an
  hour of retries");
- full (``full_jitter=True``): a delay is uniform in ``[0, nominal]``, which spreads the
  retries of many callers that failed together (AWS's "full jitter").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """``base * factor ** (n - 1)`` after the n-th failed attempt, capped at ``maximum``.

    ``max_attempts`` attempts in all: after the last there is no further wait.
    """

    base: float = 10.0
    factor: float = 2.0
    maximum: float = 900.0
    max_attempts: int = 11
    jitter: float = 0.2
    full_jitter: bool = False
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.maximum < 0 or self.factor < 1:
            raise ValueError("a backoff needs base >= 0, maximum >= 0 and factor >= 1")
        if self.max_attempts < 1:
            raise ValueError("a backoff needs at least one attempt")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def nominal_delay(self, attempts: int) -> float:
        """The delay after the ``attempts``-th failed attempt, before jitter."""
        return float(min(self.maximum, self.base * self.factor ** max(0, attempts - 1)))

    def delay(self, attempts: int) -> float:
        nominal = self.nominal_delay(attempts)
        if self.full_jitter:
            return self.rng.uniform(0, nominal)
        return nominal * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` attempts used up the allowance."""
        return attempts >= self.max_attempts

    def span(self) -> float:
        """Seconds of waiting from the first attempt to the last, before jitter."""
        return sum(self.nominal_delay(n) for n in range(1, self.max_attempts))
