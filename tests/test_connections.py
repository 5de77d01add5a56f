"""``cms-sync serve`` as a process under faults, over real sockets: idle and slow
connections, and a disk that fills up."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from process import ServeProcess

from cms_sync import signature
from cms_sync.serving import AcceptErrorLog, connection_cap
from fakes import FakeContentLake, FakeFilestack
from servers import serve
from wiring import Clock, service_env

SECRET = "whsec-connections"


@contextmanager
def service(
    tmp_path: Path, *, open_files: int | None = None, file_size: int | None = None, **env: str
) -> Iterator[ServeProcess]:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        full_env = service_env(sanity_url, filestack_url, SANITY_WEBHOOK_SECRET=SECRET, **env)
        proc = ServeProcess(full_env, tmp_path, open_files=open_files, file_size=file_size)
        try:
            yield proc
        finally:
            proc.close()


def idle_connections(url: str, count: int, stack: ExitStack) -> list[socket.socket]:
    port = int(url.rsplit(":", 1)[1])
    return [
        stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(count)
    ]


def signed_delivery(doc_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"_id": doc_id, "_type": "post", "_rev": "r1"}).encode()
    return body, {
        "content-type": "application/json",
        "idempotency-key": f"msg-{doc_id}",
        "sanity-operation": "update",
        signature.HEADER: signature.sign(SECRET, body, 1_763_700_000_000),
    }


def test_eleven_hundred_idle_connections_at_a_1024_limit_leave_the_service_answering(
    tmp_path: Path,
) -> None:
    with service(tmp_path, open_files=1024) as proc, ExitStack() as stack:
        limit = proc.wait_for(lambda e: e.get("event") == "open_files_limit", 10)
        assert limit["soft"] == limit["hard"] > 1024  # raised at start
        idle_connections(proc.url, 1100, stack)  # they never send a byte
        body, headers = signed_delivery("post-1")
        with httpx.Client(base_url=proc.url, timeout=2) as http:  # answers within 2 s
            assert http.post("/webhooks/sanity", content=body, headers=headers).status_code == 202
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200


def closed_by_server(sock: socket.socket, *, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:  # aborted: as good as closed
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_connections_that_do_not_deliver_a_request_in_time_are_closed(
    tmp_path: Path, parser: str
) -> None:
    env = {"CMS_SYNC_READ_TIMEOUT": "0.5", "CMS_SYNC_HTTP_PARSER": parser}
    with service(tmp_path, CMS_SYNC_WEBHOOK_MAX_BODY="1024", **env) as proc, ExitStack() as stack:
        socks = idle_connections(proc.url, 5, stack)
        _silent, half_headers, short_body, answered_early, then_stalled = socks
        half_headers.sendall(b"POST /webhooks/sanity HTTP/1.1\r\nHost: x\r\n")
        short_body.sendall(
            b'POST /webhooks/sanity HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n{"_id":'
        )
        # Answered 413 from its declared length, then the rest of its body never comes;
        # or it comes, and the next request stops halfway.
        too_large = b"POST /webhooks/sanity HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        for sock in (answered_early, then_stalled):
            sock.sendall(too_large + b"{")
            assert read_responses(sock, 1) == [413]
        then_stalled.sendall(b" " * 4999 + b"POST /webhooks/sanity HTTP/1.1\r\n")
        # The deadline is 0.5 s; uvicorn's own keep-alive timeout (5 s) is not what closes them.
        for sock in socks:
            assert closed_by_server(sock, within=3)
        # Complete requests are answered, pipelined or not, and the connection kept alive.
        (kept,) = idle_connections(proc.url, 1, stack)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        assert read_responses(kept, 2) == [200, 200]
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(kept, 1) == [200]


def read_responses(sock: socket.socket, count: int) -> list[int]:
    """The status codes of ``count`` small responses on ``sock`` (each with a length)."""
    sock.settimeout(10)
    data, statuses = b"", []
    while len(statuses) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
            if len(rest) >= length:
                statuses.append(int(head.split()[1]))
                data = rest[length:]
                continue
        chunk = sock.recv(4096)
        assert chunk, f"closed after {statuses}"
        data += chunk
    return statuses


def test_above_the_connection_cap_requests_get_503(tmp_path: Path) -> None:
    with service(tmp_path, CMS_SYNC_MAX_CONNECTIONS="16") as proc, ExitStack() as stack:
        assert (
            proc.wait_for(lambda e: e.get("event") == "open_files_limit", 10)["max_connections"]
            == 16
        )
        assert httpx.get(f"{proc.url}/healthz", timeout=5).status_code == 200
        held = idle_connections(proc.url, 16, stack)
        # A new connection is accepted after those 16, so the server counts them all.
        assert httpx.get(f"{proc.url}/healthz", timeout=5).status_code == 503
        for sock in held:
            sock.close()
        # Another process sees the closes when it reads them: poll, with a deadline.
        deadline = time.monotonic() + 10
        while httpx.get(f"{proc.url}/healthz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "still 503 after the connections closed"
            time.sleep(0.05)


def test_the_cap_stays_below_the_open_files_limit() -> None:
    assert connection_cap(1024, None) == 1024 - 128
    assert connection_cap(1024, 5000) == 1024 - 128  # a cap the descriptors cannot back
    assert connection_cap(100_000, 5000) == 5000


def test_failing_accepts_are_logged_once_per_interval_with_a_count() -> None:
    clock = Clock(100.0)
    handler = AcceptErrorLog(interval=10, clock=clock)
    failure: dict[str, Any] = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
    }
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):
            handler(None, failure)  # type: ignore[arg-type]
            clock.advance(0.01)  # 5 s in all
        clock.advance(6)
        handler(None, failure)  # type: ignore[arg-type]
    assert [(e["event"], e["count"]) for e in logs] == [
        ("accept_failing", 1),
        ("accept_failing", 500),
    ]


def test_a_full_disk_gets_503_and_readyz_says_so_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    acknowledged: list[str] = []
    readiness: list[int] = []
    refused = 0
    with (
        service(tmp_path, file_size=1024 * 1024) as proc,
        httpx.Client(base_url=proc.url, timeout=10) as http,
    ):
        assert http.get("/readyz").status_code == 200
        for n in range(400):  # each commit grows the WAL; at 1 MiB the disk is "full"
            body, headers = signed_delivery(f"post-{n}")
            status = http.post("/webhooks/sanity", content=body, headers=headers).status_code
            assert status in (202, 503)
            if status == 202:
                acknowledged.append(f"post-{n}")
                continue
            refused += 1
            # SQLite may restart a checkpointed WAL from its start, and then small writes
            # fit again; /readyz must say 503 while writes fail, at least at some point.
            readiness.append(http.get("/readyz").status_code)
            if 503 in readiness and refused >= 5:
                break
    assert refused and acknowledged
    assert 503 in readiness, readiness  # the old read-only ping said 200 throughout
    with sqlite3.connect(tmp_path / "cms-sync.db") as conn:
        queued = {doc_id for (doc_id,) in conn.execute("SELECT document_id FROM jobs")}
    assert set(acknowledged) <= queued  # nothing acknowledged was lost
