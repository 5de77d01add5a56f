"""What one durable SQLite commit costs on this disk, as the job store makes them.

    python bench/commit.py [--commits 500] [--windows 6]

A delivery is acknowledged only once its commit is on disk (WAL, ``synchronous=FULL``),
so every batch of deliveries pays one fsync. This makes commits of one small row, one
after another, in a fresh database in the current directory (so on the disk the store
would use), and prints for each window of ``--commits``: the system and user CPU per
commit, the wall time per commit and the size of the WAL file.

While the WAL grows (the first windows), each fsync also makes the file's new size
durable; once SQLite checkpoints and starts the WAL again from its beginning, commits
overwrite blocks that are already allocated, and the sync is cheaper. The ratio of the
two is the figure to compare between machines. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=500, help="per window")
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-commit-", dir=Path.cwd()))
    try:
        conn = sqlite3.connect(work / "commit.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # as the job store: on disk at COMMIT
        conn.execute("CREATE TABLE inbox (key TEXT PRIMARY KEY, received_at REAL)")
        print("| window | system CPU per commit | user CPU per commit | wall per commit | WAL |")
        print("|---|---|---|---|---|")
        for window in range(args.windows):
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for n in range(args.commits):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO inbox VALUES (?, ?)", (f"{window}-{n}", time.time()))
                conn.execute("COMMIT")
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            system = (after.ru_stime - before.ru_stime) / args.commits * 1e6
            user = (after.ru_utime - before.ru_utime) / args.commits * 1e6
            wal = (work / "commit.db-wal").stat().st_size / 1024
            print(
                f"| {window + 1} | {system:.0f} µs | {user:.0f} µs | "
                f"{wall / args.commits * 1e6:.0f} µs | {wal:,.0f} KiB |"
            )
        conn.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
