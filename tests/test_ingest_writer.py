"""The ingest writer's batches, in this process: what each request of a batch gets, and
when nothing is written. (Its process and the service's end: test_ingest_process.py.)"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cms_sync.jobstore.ingest_writer import Frames, Writer, _open, frame
from cms_sync.jobstore.sqlite import _connect
from cms_sync.jobstore.writelock import WriteLock, lock_path


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    opened = _connect(path, 5.0)  # the store's schema
    for conn in (opened.conn, opened.writes):
        conn.close()
    opened.lock.close()
    return path


@pytest.fixture
def writer(database: Path) -> Iterator[Writer]:
    conn = _open(database)
    stat = os.stat(database)
    lock = WriteLock(lock_path(database))
    yield Writer(conn, database, (stat.st_dev, stat.st_ino), lock)
    conn.close()
    lock.close()


def accept(key: str | None, *docs: str, within: float = 5.0) -> list[Any]:
    jobs = [[doc, "update", None, "webhook"] for doc in docs]
    return ["accept", time.monotonic() + within, key, 1_763_700_000.0, jobs]


def jobs(database: Path) -> dict[str, str]:
    with sqlite3.connect(database) as conn:
        return dict(conn.execute("SELECT document_id, delivery_id FROM jobs"))


def test_a_batch_queues_coalesces_and_refuses_a_repeated_key(
    writer: Writer, database: Path
) -> None:
    outcomes = writer.write(
        [accept("k1", "post-1"), accept("k2", "post-1", "post-2"), accept("k1", "post-3")]
    )
    assert outcomes == [
        ["ok", [False, ["post-1"], []]],
        ["ok", [False, ["post-2"], ["post-1"]]],
        ["ok", [True, [], []]],  # the key of the first, in the same batch
    ]
    assert jobs(database) == {"post-1": "k2", "post-2": "k2"}


def test_a_request_that_fails_fails_alone(writer: Writer, database: Path) -> None:
    outcomes = writer.write(
        [accept("k1", "post-1"), ["nonsense", time.monotonic() + 5], accept("k2", "post-2")]
    )
    assert outcomes[0] == ["ok", [False, ["post-1"], []]]
    assert outcomes[1][0] == "unavailable" and "nonsense" in outcomes[1][1]
    assert outcomes[2] == ["ok", [False, ["post-2"], []]]
    assert set(jobs(database)) == {"post-1", "post-2"}


def test_a_request_past_its_deadline_is_not_written(writer: Writer, database: Path) -> None:
    outcomes = writer.write([accept("k1", "post-1", within=-0.1), accept("k2", "post-2")])
    assert outcomes[0] == ["unavailable", "job store: busy: not written in time"]
    assert outcomes[1][0] == "ok"
    assert set(jobs(database)) == {"post-2"}


def test_a_lock_another_program_holds_is_waited_for_no_longer_than_the_deadline(
    writer: Writer, database: Path
) -> None:
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        (outcome,) = writer.write([accept("k1", "post-1", within=0.3)])
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert outcome[0] == "unavailable" and "locked" in outcome[1]
    assert took < 2  # the deadline, not SQLite's default busy timeout
    assert writer.write([accept("k1", "post-1")])[0][0] == "ok"  # the key was not used up


def test_once_the_file_is_replaced_every_answer_is_lost(writer: Writer, database: Path) -> None:
    database.rename(database.with_name("moved.db"))
    database.write_bytes(b"")
    outcomes = writer.write([accept("k1", "post-1"), accept("k2", "post-2")])
    assert [kind for kind, _ in outcomes] == ["lost", "lost"]
    assert "another file is at the path" in outcomes[0][1]


def test_frames_are_read_whole_however_the_bytes_arrive() -> None:
    values = [["ready"], [["ok", [False, ["post-1"], []]]], [["lost", "gone"]]]
    stream = b"".join(frame(v) for v in values)
    for size in (1, 3, 7, len(stream)):
        frames, found = Frames(), []
        for start in range(0, len(stream), size):
            found += frames.feed(stream[start : start + size])
        assert found == values and not frames.partial


def test_a_frame_longer_than_the_limit_or_garbled_is_refused() -> None:
    with pytest.raises(ValueError, match="frame"):
        Frames().feed((2**31).to_bytes(4, "big") + frame([])[4:])
    with pytest.raises(ValueError, match="not one value"):
        Frames().feed((3).to_bytes(4, "big") + b"\xff\x00\x01")
