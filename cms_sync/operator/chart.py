"""The throughput chart's geometry: stacked bars per minute, drawn as inline SVG.

The template draws the rectangles; this only works out where they go, so the chart needs
no script and no front-end build (and the CSP allows no inline style: colours come from
the stylesheet, by class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cms_sync.jobs import RunOutcome
from cms_sync.operations import Throughput

#: Bottom to top.
STACK = (RunOutcome.DONE, RunOutcome.RETRY, RunOutcome.EXPIRED, RunOutcome.FAILED)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    outcome: RunOutcome
    count: int
    minute: int  # minutes before the end of the window (0: the last minute)


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    scale: int  # runs at the top of the chart
    bars: tuple[Bar, ...]


def bars(throughput: Throughput, *, width: int = 600, height: int = 120) -> Chart:
    """One stacked bar per slot, scaled so the busiest slot nearly fills the height."""
    scale = _nice(throughput.peak)
    slot_width = width / len(throughput.slots)
    drawn = []
    for i, slot in enumerate(throughput.slots):
        top = float(height)
        for outcome in STACK:
            n = slot.get(outcome, 0)
            if not n:
                continue
            h = height * n / scale
            top -= h
            drawn.append(
                Bar(
                    x=round(i * slot_width + 0.5, 2),
                    y=round(top, 2),
                    width=round(max(slot_width - 1, 1), 2),
                    height=round(h, 2),
                    outcome=outcome,
                    count=n,
                    minute=len(throughput.slots) - 1 - i,
                )
            )
    return Chart(width, height, scale, tuple(drawn))


def _nice(peak: int) -> int:
    """The scale's top: 1, 2 or 5 times a power of ten, at least ``peak`` (and 1)."""
    if peak <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(peak)))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= peak)
