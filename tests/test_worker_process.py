"""``cms-sync serve`` runs its worker in a child process: real processes over sockets.

The child syncs, the service counts what it reports (``/metrics``), answers 503 from
``/readyz`` while the child is gone and starts another, stops it gracefully on SIGTERM,
and a child whose service dies ends by itself. ``--inline-worker`` keeps the worker on
the service's own loop. Where a test waits for another process it polls with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from process import ServeProcess
from service_world import wait_for

from cms_sync.backoff import Backoff
from cms_sync.jobs import JobRequest, JobSource
from cms_sync.mapping import default_mapping
from cms_sync.storage import open_storage
from cms_sync.worker_process import WorkerProcess, WorkerSpec
from fakes import FakeContentLake, FakeFilestack
from scenarios import catalogue, converged
from senders import SECRET, Deliveries
from servers import serve
from wiring import crash_test_env, make_settings

TOKEN = "sk-test-token"


class World:
    def __init__(self, tmp_path: Path, lake: FakeContentLake, fs: FakeFilestack) -> None:
        self.tmp_path, self.lake, self.fs = tmp_path, lake, fs
        self.database = tmp_path / "jobs.db"
        self.documents = [d for d in lake.documents.values() if d["_type"] in ("product", "post")]
        self.env: dict[str, str] = {}
        self.sender = Deliveries("")  # one key per message, across services

    def runners(self) -> list[str]:
        """The lease owner of each job run, from the job history."""
        with sqlite3.connect(self.database) as conn:
            return [str(w) for (w,) in conn.execute("SELECT worker FROM job_history")]

    def deliver_all(self, proc: ServeProcess) -> None:
        for doc in self.documents:
            assert self.sender.post(self.sender.groq(doc["_id"], doc["_type"]), proc.url) == 202

    def synced(self) -> bool:
        return converged(self.lake.documents, [d["_id"] for d in self.documents])


@contextmanager
def world(tmp_path: Path) -> Iterator[World]:
    documents = catalogue(products=3, posts=2, shared=2)
    lake = FakeContentLake(documents={d["_id"]: d for d in documents}, token=TOKEN)
    fs = FakeFilestack()
    w = World(tmp_path, lake, fs)
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        w.env = crash_test_env(
            sanity_url,
            filestack_url,
            SANITY_WEBHOOK_SECRET=SECRET,
            CMS_SYNC_DATABASE=str(w.database),
        )
        try:
            yield w
        finally:
            w.sender.http.close()


@contextmanager
def service(w: World, *args: str) -> Iterator[ServeProcess]:
    proc = ServeProcess(w.env, w.tmp_path, args=args)
    try:
        yield proc
    finally:
        proc.close()


def started(proc: ServeProcess, nth: int = 1) -> dict[str, Any]:
    """The ``nth`` report of a worker process running."""

    def reports() -> list[dict[str, Any]]:
        return [e for e in proc.events if e.get("event") == "worker_process_started"]

    proc.wait_for(lambda _: len(reports()) >= nth, 30)
    return reports()[nth - 1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone too
        return stat.read().split(") ")[-1][0] != "Z"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when it is not there)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as written
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_the_worker_runs_in_a_child_process_that_reports_to_the_service(
    tmp_path: Path,
) -> None:
    with world(tmp_path) as w:
        w.env["CMS_SYNC_FILESTACK_STORE_RATE"] = "20"  # stores close together wait
        with service(w) as proc:
            child = started(proc)
            assert child["pid"] != proc.proc.pid
            worker = proc.wait_for(lambda e: e.get("event") == "worker_started", 10)
            assert worker["pid"] == child["pid"]  # logged by the child, to the shared stderr
            assert httpx.get(f"{proc.url}/readyz").status_code == 200

            w.deliver_all(proc)
            wait_for(w.synced, 60)
            wait_for(lambda: len(w.runners()) > 0)
            # The lease owner names the service's process, the one an operator manages.
            assert all(f":{proc.proc.pid}:" in runner for runner in w.runners())

            # The service counts what the child did: its events come back over the pipe,
            # its rate limiter's waits with them.
            def counted() -> bool:
                text = httpx.get(f"{proc.url}/metrics").text
                return (
                    metric(text, "cms_sync_assets_stored_total") == len(w.fs.stores)
                    and metric(text, "cms_sync_job_runs_total", verdict="done", source="webhook")
                    == len(w.documents)
                    and metric(text, "cms_sync_rate_limit_waits_total", limit="filestack.store")
                    >= 1
                )

            wait_for(counted, 10)
            text = httpx.get(f"{proc.url}/metrics").text
            assert metric(
                text,
                "cms_sync_remote_calls_total",
                remote="filestack",
                operation="store",
                outcome="2xx",
            ) == len(w.fs.stores)

            proc.terminate()  # graceful: the child stops first, then the storage closes
            said = [e.get("event") for e in proc.events]
            assert said.index("worker_process_stopped") < said.index("stopped")
            assert not alive(child["pid"])


def test_an_idle_worker_process_is_woken_by_a_delivery_not_by_its_poll(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.env["CMS_SYNC_POLL_INTERVAL"] = "60"  # only a wake-up finds the job in time
        with service(w) as proc:
            started(proc)
            w.deliver_all(proc)
            wait_for(w.synced, 20)
            # idle again, and woken again by the next deliveries
            before = len(w.runners())
            w.deliver_all(proc)
            wait_for(lambda: len(w.runners()) > before, 20)
            proc.terminate()


def test_a_worker_process_that_dies_is_replaced_and_readyz_says_so_meanwhile(
    tmp_path: Path,
) -> None:
    with world(tmp_path) as w, service(w) as proc:
        first = started(proc)
        os.kill(first["pid"], signal.SIGKILL)

        def unready() -> bool:
            answer = httpx.get(f"{proc.url}/readyz")
            return answer.status_code == 503 and "worker is not running" in answer.text

        wait_for(unready, 10)
        exited = proc.wait_for(lambda e: e.get("event") == "worker_process_exited", 10)
        assert exited["code"] == -signal.SIGKILL
        second = started(proc, 2)
        assert second["pid"] != first["pid"]
        assert httpx.get(f"{proc.url}/readyz").status_code == 200

        w.deliver_all(proc)  # the new child syncs what is queued now
        wait_for(w.synced, 60)
        proc.terminate()


def test_a_worker_process_ends_by_itself_when_its_service_dies(tmp_path: Path) -> None:
    with world(tmp_path) as w, service(w) as proc:
        child = started(proc)
        os.kill(proc.proc.pid, signal.SIGKILL)  # the service alone, not its group
        proc.proc.wait(timeout=10)
        wait_for(lambda: not alive(child["pid"]), 20)  # its input ended: a graceful stop


def test_inline_worker_runs_on_the_services_own_loop(tmp_path: Path) -> None:
    with world(tmp_path) as w, service(w, "--inline-worker") as proc:
        worker = proc.wait_for(lambda e: e.get("event") == "worker_started", 10)
        assert worker["pid"] == proc.proc.pid
        w.deliver_all(proc)
        wait_for(w.synced, 60)
        proc.terminate()
        assert "worker_process_started" not in [e.get("event") for e in proc.events]


class Failing:
    """A listener with a bug: it raises on the first event the child reports."""

    def __init__(self) -> None:
        self.heard = 0

    def emit(self, event: object) -> None:
        self.heard += 1
        raise RuntimeError("a bug in a listener")


@pytest.mark.anyio
async def test_a_child_the_service_cannot_hear_is_killed_and_replaced(tmp_path: Path) -> None:
    # Its one job fails fast (nothing listens on Sanity's port) and reports a call.
    database = tmp_path / "jobs.db"
    async with open_storage(database) as storage:
        await storage.jobs.enqueue([JobRequest("post-1", source=JobSource.REPLAY)], now=0)
    settings = make_settings(
        cms_sync_database=str(database), sanity_api_host=f"http://127.0.0.1:{closed_port()}"
    )
    listener = Failing()
    child = WorkerProcess(
        WorkerSpec(settings, default_mapping(), owner=""),
        events=listener,
        stop_timeout=10,
        restarts=Backoff(base=0.05, max_attempts=100, jitter=0),
    )
    child.start()
    try:
        assert await child.wait_started(30)
        first = child.pid
        assert first is not None
        child.ready.clear()
        assert await child.wait_started(30)  # another child, after the listener raised
        assert listener.heard >= 1 and child.pid != first
        assert not alive(first)  # killed, not left to run with nobody listening
    finally:
        await child.stop()
    assert not child.running
