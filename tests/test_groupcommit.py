"""Group commit: concurrent writes share a transaction, each keeps its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cms_sync.errors import StoreUnavailable
from cms_sync.jobstore.groupcommit import GroupCommit

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    return path


@pytest.fixture
def writer(database: Path) -> Iterator[GroupCommit]:
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    commit = GroupCommit(conn, threading.Lock())
    commit.start()
    yield commit
    commit.close()


def rows(database: Path) -> list[str]:
    with sqlite3.connect(database) as conn:
        return sorted(k for (k,) in conn.execute("SELECT k FROM t"))


def insert(key: str) -> Callable[[sqlite3.Connection], str]:
    def fn(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        return key

    return fn


async def test_concurrent_writes_share_transactions_and_each_gets_its_result(
    writer: GroupCommit, database: Path
) -> None:
    keys = [f"k{i}" for i in range(200)]
    results = await asyncio.gather(*(writer.submit(insert(k), budget=5) for k in keys))
    assert results == keys and rows(database) == sorted(keys)
    assert writer.batches < len(keys)  # some batch held more than one write


async def test_a_failing_write_is_rolled_back_alone(writer: GroupCommit, database: Path) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES ('half-done')")
        raise ValueError("a bug in one request")

    # A first write holds the thread until the others are queued, so they share a batch.
    entered, release = threading.Event(), threading.Event()

    def first(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(5)

    held = asyncio.ensure_future(writer.submit(first, budget=5))
    assert await asyncio.to_thread(entered.wait, 5)
    batch = [
        asyncio.ensure_future(writer.submit(fn, budget=5))
        for fn in (insert("a"), boom, insert("a"), insert("b"))  # the second "a": duplicate
    ]
    await asyncio.sleep(0)
    release.set()
    await held
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    assert outcomes[0] == "a" and outcomes[3] == "b"
    assert isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], StoreUnavailable)  # sqlite3.IntegrityError, translated
    assert rows(database) == ["a", "b"]
    assert writer.batches == 2  # the first write's, and one for the other four


async def test_a_held_lock_fails_the_write_by_its_deadline_and_writes_nothing(
    writer: GroupCommit, database: Path
) -> None:
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable):
            await writer.submit(insert("late"), budget=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await writer.submit(insert("now"), budget=5) == "now"
    assert rows(database) == ["now"]


async def test_the_busy_timeout_is_not_set_again_for_every_batch(database: Path) -> None:
    # The pragma is a statement, paid in GIL round trips: batches with similar deadlines
    # share one setting.
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    pragmas: list[str] = []
    conn.set_trace_callback(lambda s: pragmas.append(s) if "busy_timeout" in s else None)
    writer = GroupCommit(conn, threading.Lock())
    writer.start()
    try:
        for n in range(20):
            await writer.submit(insert(f"k{n}"), budget=2)
    finally:
        writer.close()
    assert len(pragmas) == 1 and rows(database) == sorted(f"k{n}" for n in range(20))


async def test_a_shorter_deadline_after_a_longer_one_is_still_kept(
    writer: GroupCommit, database: Path
) -> None:
    # SQLite's busy timeout is set again only when it is off by more than the slack:
    # never left longer than the batch's deadline allows.
    assert await writer.submit(insert("early"), budget=30) == "early"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await writer.submit(insert("late"), budget=0.3)
        assert time.monotonic() - started < 10  # not the 30 s the first write allowed
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert rows(database) == ["early"]


async def test_the_check_refuses_a_batch_before_it_is_written(database: Path) -> None:
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)

    def lost() -> None:
        raise StoreUnavailable("job store lost")

    writer = GroupCommit(conn, threading.Lock(), check=lost)
    writer.start()
    try:
        with pytest.raises(StoreUnavailable, match="lost"):
            await writer.submit(insert("x"), budget=5)
    finally:
        writer.close()
    assert rows(database) == []
