"""The service's end of the ingest writer, with the writer in a process of its own: what
the service is told when the writer dies, hangs or cannot start, and that a writer given
up on can acknowledge nothing afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cms_sync.errors import StoreUnavailable
from cms_sync.jobstore.ingest_process import IngestProcess
from cms_sync.jobstore.sqlite import _connect

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    opened = _connect(path, 5.0)
    for conn in (opened.conn, opened.writes):
        conn.close()
    opened.lock.close()
    return path


def identity(database: Path) -> tuple[int, int]:
    stat = os.stat(database)
    return stat.st_dev, stat.st_ino


@pytest.fixture
async def ingest(database: Path) -> AsyncIterator[IngestProcess]:
    process = IngestProcess(database, identity(database), grace=0.3, restart_interval=0)
    yield process
    await process.close()


def accept(key: str, doc: str) -> list[object]:
    return ["accept", key, 1_763_700_000.0, [[doc, "update", None, "webhook"]]]


def keys(database: Path) -> list[str]:
    with sqlite3.connect(database) as conn:
        return sorted(k for (k,) in conn.execute("SELECT idempotency_key FROM inbox"))


def held(database: Path) -> sqlite3.Connection:
    """Another program's write transaction on the database."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


async def test_requests_of_one_turn_are_answered_each_with_its_own_result(
    ingest: IngestProcess, database: Path
) -> None:
    deadline = time.monotonic() + 5
    results = await asyncio.gather(
        *(ingest.request(accept(f"k{n}", f"post-{n % 2}"), deadline) for n in range(4))
    )
    assert results == [
        [False, ["post-0"], []],
        [False, ["post-1"], []],
        [False, [], ["post-0"]],
        [False, [], ["post-1"]],
    ]
    assert keys(database) == ["k0", "k1", "k2", "k3"]


async def test_a_writer_killed_mid_request_fails_it_and_the_next_one_starts_anew(
    ingest: IngestProcess, database: Path
) -> None:
    await ingest.request(accept("k0", "post-0"), time.monotonic() + 5)  # started
    first = ingest.pid
    holder = held(database)  # so that the next request waits in the writer
    try:
        waiting = asyncio.ensure_future(
            ingest.request(accept("k1", "post-1"), time.monotonic() + 5)
        )
        await asyncio.sleep(0.2)  # the writer has it and waits for the lock
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match="exited"):
            await waiting
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await ingest.request(accept("k1", "post-1"), time.monotonic() + 5) == [
        False,
        ["post-1"],
        [],
    ]
    assert ingest.pid not in (None, first)
    assert keys(database) == ["k0", "k1"]


async def test_a_writer_that_stops_answering_is_given_up_and_its_late_answer_counts_for_nothing(
    ingest: IngestProcess, database: Path
) -> None:
    await ingest.request(accept("k0", "post-0"), time.monotonic() + 5)
    stuck = ingest.pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)  # a writer hung on its disk, say
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not finish in time"):
            await ingest.request(accept("k1", "post-1"), time.monotonic() + 0.2)
        assert time.monotonic() - started < 3  # the deadline and the grace
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed and reaped, as it should be
            os.kill(stuck, signal.SIGCONT)
    # The hung writer was killed before it could write or answer; a new one takes over.
    assert await ingest.request(accept("k2", "post-2"), time.monotonic() + 5) == [
        False,
        ["post-2"],
        [],
    ]
    assert ingest.pid != stuck
    assert keys(database) == ["k0", "k2"]


async def test_a_writer_that_cannot_start_says_why_and_is_not_restarted_at_once(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "gone.db"
    process = IngestProcess(missing, (0, 0), restart_interval=60)
    try:
        with pytest.raises(StoreUnavailable, match="cannot open"):
            await process.request(accept("k0", "post-0"), time.monotonic() + 5)
        with pytest.raises(StoreUnavailable, match="restarting soon"):
            await process.request(accept("k0", "post-0"), time.monotonic() + 5)
    finally:
        await process.close()


async def test_closing_answers_what_was_sent_first(ingest: IngestProcess, database: Path) -> None:
    await ingest.request(accept("k", "post-0"), time.monotonic() + 5)  # started
    pending = [
        asyncio.ensure_future(ingest.request(accept(f"k{n}", "post-1"), time.monotonic() + 5))
        for n in range(3)
    ]
    await asyncio.sleep(0)  # sent in this turn of the loop
    await ingest.close()
    assert [len(result[1]) + len(result[2]) for result in await asyncio.gather(*pending)] == [
        1,
        1,
        1,
    ]
    assert keys(database) == ["k", "k0", "k1", "k2"]
    with pytest.raises(StoreUnavailable, match="closed"):
        await ingest.request(accept("k3", "post-1"), time.monotonic() + 5)
