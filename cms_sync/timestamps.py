"""Timestamps as Sanity writes them (ISO-8601, UTC), read into unix seconds."""

from __future__ import annotations

from datetime import datetime


def parse_timestamp(value: str | None) -> float | None:
    """ISO-8601 (``2026-11-20T10:00:00.123Z``) to unix seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()
