"""Ingest benchmark: signed deliveries to ``cms-sync serve`` beside a bare Starlette endpoint.

    python bench/ingest.py [--seconds 5] [--slices 4] [--concurrency 1,16,64]
                           [--parser httptools,h11] [--upstream-latency 0.04] [--documents 300]
                           [--database sqlite,postgresql://postgres@127.0.0.1:5432/postgres]
                           [--against DIR] [--client python|wrk]

For each HTTP parser and store, one run starts the Sanity and Filestack fakes (each
Sanity call taking ``--upstream-latency`` seconds, each store six times as long; a fresh
pair for each service, so that every worker finds every document still to sync),
``cms-sync serve`` (SQLite in a fresh directory under the current one,
so on the real disk; or, for a ``postgresql://`` URL in ``--database``, a fresh database
on that server, dropped afterwards) and a bare Starlette endpoint under the same uvicorn
set-up (asyncio loop, same parser) that reads the body and answers 202. The same client
(keep-alive HTTP/1.1 connections, one per concurrent sender, in this process) sends the
same signed deliveries to each for ``--seconds`` per level, in ``--slices`` alternating
slices (bare, service, bare, ...: a host whose speed drifts during the level slows both
alike): the bare endpoint while the service is stopped (SIGSTOP) so that its worker
takes no CPU; the service with its worker busy syncing what the deliveries queue (300
documents, each delivery for a random one). It prints one table: throughput of each,
their ratio, latency percentiles, what the worker got done a second during the service's
run (files stored, patches committed), and the CPU a request took: the server's processes
(the service with its ingest writer and worker process, or the bare endpoint) and this client.
The last column, the CPU ceiling, is the ratio the service would reach if it and the
client kept every core of the machine busy at that CPU a request, against the bare
endpoint's measured rate: the most any shorter round trip could give on this machine.
Every 202 from the service is fsync'd before it is sent.
``--against DIR`` also starts ``cms-sync serve`` from another checkout (``PYTHONPATH=DIR``,
a ``git worktree`` of an older commit, say) and measures it in the same slices, so that a
change is seen side by side with what it changed. ``--client wrk`` sends the same
deliveries with wrk (C, one thread, ``bench/ingest_wrk.lua``) instead of this script's
asyncio client: a sender that takes a third less CPU a request from the two cores the
servers share, and answers each response at once rather than in the bursts of a busy
Python loop. It is a benchmark, not a test: numbers
depend on the machine and its load; the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec-bench"  # noqa: S105 - the benchmark's own throwaway secret
TOKEN = "sk-bench"  # noqa: S105 - the write token the Content Lake fake accepts
FILESTACK_KEY = "fs-bench"  # the API key the Filestack fake accepts


# -- helper processes -----------------------------------------------------------------
def serve_fakes(documents: int, latency: float) -> None:
    """Serve the Content Lake and Filestack fakes; print their URLs as one JSON line.

    Each Sanity call takes ``latency`` seconds and each Filestack store six times that
    (40 ms and 240 ms by default, about what the backfill issue measured against). ``GET
    /bench/stats`` on the Sanity fake counts the calls so far, which shows how busy the
    worker was.
    """
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    import httpx

    from fakes import FakeContentLake, FakeFilestack
    from scenarios import catalogue
    from servers import serve

    docs = catalogue(products=documents // 2, posts=documents - documents // 2, shared=20)
    lake = FakeContentLake(documents={d["_id"]: d for d in docs}, token=TOKEN)
    filestack = FakeFilestack(api_key=FILESTACK_KEY)
    calls = Counter[str]()

    def sanity(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/bench/stats":  # what the worker got done: stores that
            # made a file, and patches the Content Lake committed
            done = {"stored": len(filestack.stores), "patched": len(lake.commits)}
            return httpx.Response(200, json={**calls, **done})
        calls["query" if "/data/query/" in request.url.path else "mutate"] += 1
        time.sleep(latency)
        return lake(request)

    def store(request: httpx.Request) -> httpx.Response:
        calls["store"] += 1
        time.sleep(latency * 6)
        return filestack(request)

    with serve(sanity) as (sanity_url, lake_seen), serve(store) as (fs_url, fs_seen):
        print(json.dumps({"sanity": sanity_url, "filestack": fs_url}), flush=True)
        while True:  # until killed; forget requests so memory stays flat
            time.sleep(1)
            lake_seen.clear()
            fs_seen.clear()


def serve_bare(port: int, parser: str) -> None:
    """The bare endpoint: read the body, answer 202; nothing stored. Same uvicorn set-up
    as ``cms-sync serve``: the asyncio loop and the same HTTP parser."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def accept(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "queued"}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/webhooks/sanity", accept, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http=parser,  # type: ignore[arg-type]
    )


# -- the client ---------------------------------------------------------------------
def serve_split(port: int) -> None:
    """``cms-sync serve --no-worker`` on ``port`` and, once it is ready, a second ``cms-sync
    serve`` (on a port of its own, sent nothing) on the same database to run the worker:
    the webhook split from its worker. Both end with this process's SIGTERM."""
    command = [sys.executable, "-m", "cms_sync", "serve"]
    front = subprocess.Popen([*command, "--port", str(port), "--no-worker"])  # noqa: S603
    children = [front]
    signal.signal(signal.SIGTERM, lambda *_: [c.send_signal(signal.SIGTERM) for c in children])
    wait_healthy(port, front, "/readyz")  # the schema is made before the second opens it
    children.append(subprocess.Popen([*command, "--port", "0"]))  # noqa: S603
    for child in children:
        child.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deliveries(doc_ids: list[str], seed: int) -> Iterator[bytes]:
    """Signed GROQ-webhook deliveries, each with its own idempotency key."""
    sys.path.insert(0, str(ROOT))
    from cms_sync import signature

    rng = random.Random(seed)  # noqa: S311 - picks documents, not keys
    n = 0
    while True:
        n += 1
        doc_id = rng.choice(doc_ids)
        body = json.dumps({"_id": doc_id, "_type": doc_id.split("-")[0], "_rev": "r"}).encode()
        sig = signature.sign(SECRET, body, 1_763_700_000_000 + n)
        head = (
            "POST /webhooks/sanity HTTP/1.1\r\nHost: bench\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Idempotency-Key: bench-{seed}-{n}\r\n"
            "Sanity-Operation: update\r\n"
            f"Sanity-Document-Id: {doc_id}\r\n"
            f"{signature.HEADER}: {sig}\r\n\r\n"
        )
        yield head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    #: Answers by status (``wrk`` tells only "2xx/3xx" from "other").
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    #: CPU seconds of the server's processes (the service, its ingest writer) and of this
    #: client, over the measured slices.
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def cpu_per_request(self, which: str) -> float:
        """Microseconds of CPU a request: ``server`` or ``client``."""
        spent = self.server_cpu if which == "server" else self.client_cpu
        return spent / max(1, len(self.latencies)) * 1e6

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def ceiling(self, cores: int) -> float:
        """Requests a second if the server's processes and this client kept every core
        busy at the CPU a request they took here: what no shorter round trip can pass
        (a server that runs elsewhere, PostgreSQL, is not counted)."""
        per_request = self.server_cpu + self.client_cpu
        return cores * len(self.latencies) / per_request if per_request else float("inf")

    def add(self, other: Result) -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.seconds += other.seconds
        self.server_cpu += other.server_cpu
        self.client_cpu += other.client_cpu

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def load(port: int, requests: Iterator[bytes], concurrency: int, seconds: float) -> Result:
    result = Result()
    stop_at = time.perf_counter() + seconds

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                request = next(requests)
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[str(status)] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of a process and its children so far: Linux /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
        total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measured_load(
    port: int, server: int, requests: Iterator[bytes], concurrency: int, seconds: float
) -> Result:
    """:func:`load`, with the CPU the server's process tree and this client spent."""
    server_before, client_before = tree_cpu(server), time.process_time()
    result = asyncio.run(load(port, requests, concurrency, seconds))
    result.server_cpu = tree_cpu(server) - server_before
    result.client_cpu = time.process_time() - client_before
    return result


#: wrk's script (``--client wrk``), and the most requests a second it is given for.
WRK_SCRIPT = Path(__file__).with_name("ingest_wrk.lua")
WRK_MAX_RATE = 40_000


def wrk_batch(requests: Iterator[bytes], seconds: float, work: Path) -> tuple[Path, int]:
    """The deliveries for one slice of ``wrk`` (``seconds`` rounded to whole seconds, its
    unit): a file of more than it can send in that time, and the seconds."""
    whole = max(1, round(seconds))
    batch = work / "wrk-deliveries.bin"
    with batch.open("wb") as out:
        for _ in range(WRK_MAX_RATE * whole + 1000):
            out.write(next(requests) + b"\0\0\0")
    return batch, whole


def wrk_load(port: int, server: int, batch: Path, concurrency: int, seconds: int) -> Result:
    """One slice sent by ``wrk`` (one thread, ``concurrency`` connections), each of the
    deliveries in ``batch`` at most once; with the CPU of the server's process tree and
    of wrk."""
    server_before = tree_cpu(server)
    wrk = subprocess.Popen(  # noqa: S603 - the benchmark's own command line
        [
            *("wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(WRK_SCRIPT)),
            *(f"http://127.0.0.1:{port}/webhooks/sanity", "--", str(batch)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert wrk.stdout is not None
    output = wrk.stdout.read()
    _, code, usage = os.wait4(wrk.pid, 0)
    wrk.returncode = os.waitstatus_to_exitcode(code)
    result = Result(server_cpu=tree_cpu(server) - server_before)
    result.client_cpu = usage.ru_utime + usage.ru_stime
    found: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["bench", "latency"]:
            result.latencies += [int(parts[2]) / 1e6] * int(parts[3])
        elif parts[:1] == ["bench"] and len(parts) == 3:
            found[parts[1]] = int(parts[2])
    if wrk.returncode != 0 or "requests" not in found:
        raise SystemExit(f"wrk failed ({wrk.returncode}):\n{output}")
    if found["ran_out"]:
        raise SystemExit("wrk sent every delivery it was given: raise WRK_MAX_RATE")
    if found["socket_errors"]:
        raise SystemExit(f"wrk saw {found['socket_errors']} socket errors")
    result.seconds = found["duration_us"] / 1e6
    result.statuses["other"] = found["non2xx"]
    result.statuses["2xx/3xx"] = found["requests"] - found["non2xx"]
    return result


def wait_healthy(port: int, proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a benchmark process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"port {port} never became healthy")


def fake_calls(sanity_url: str) -> Counter[str]:
    with urllib.request.urlopen(f"{sanity_url}/bench/stats", timeout=10) as answer:  # noqa: S310
        return Counter[str](json.load(answer))


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    procs.clear()


@contextmanager
def store_for(database: str, work: Path) -> Iterator[str]:
    """CMS_SYNC_DATABASE for one run: a new SQLite file, or a new database on the server."""
    if not database.startswith("postgresql://"):
        path = Path(tempfile.mkdtemp(dir=work)) / "cms-sync.db"
        yield str(path)
        return
    import psycopg

    name = f"cms_sync_bench_{os.getpid()}_{uuid.uuid4().hex[:12]}"  # two in one run
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield urlsplit(database)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@dataclass
class Row:
    parser: str
    store: str
    level: int
    ours: Result
    bare: Result
    #: What the worker got done a second while ours was measured: files stored, patches.
    stored: float
    patched: float
    theirs: Result | None = None  # the service of --against, when given


@contextmanager
def fakes_for(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    """The Sanity and Filestack fakes in a process of their own, with every document
    still to sync; their URLs."""
    fakes = subprocess.Popen(  # noqa: S603 - this script
        [
            *(sys.executable, __file__, "--serve-fakes"),
            *("--documents", str(args.documents)),
            *("--upstream-latency", str(args.upstream_latency)),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert fakes.stdout is not None
        yield json.loads(fakes.stdout.readline())
    finally:
        stop([fakes])


def measure(
    parser: str, database: str, levels: list[int], work: Path, args: argparse.Namespace
) -> list[Row]:
    """Start the service (on ``database``), the bare endpoint and, with ``--against``,
    the other checkout's service (on a database of its own) with ``parser``; measure
    every level.

    Each service gets fakes of its own, started afresh for this parser and store: each
    worker finds every document still to sync (a worker that found them synced, by
    another service or an earlier parser's run, would only read them).
    """
    procs: list[subprocess.Popen[bytes]] = []
    store = "postgresql" if database.startswith("postgresql://") else "sqlite"
    with ExitStack() as stack:
        url = stack.enter_context(store_for(database, work))
        other = stack.enter_context(store_for(database, work)) if args.against else None
        fakes = [stack.enter_context(fakes_for(args)) for _ in range(2 if args.against else 1)]
        return _measure(parser, store, (url, other), levels, fakes, work, args, procs)


def _service(
    port: int,
    parser: str,
    database: str,
    urls: dict[str, str],
    work: Path,
    pythonpath: str | None = None,
    *,
    split: bool = False,
) -> subprocess.Popen[bytes]:
    """``cms-sync serve`` on ``port``; from another checkout when ``pythonpath`` is set;
    with ``split``, :func:`serve_split`'s two processes."""
    env = {
        **os.environ,
        "SANITY_PROJECT_ID": "cmsdemo",
        "SANITY_DATASET": "production",
        "SANITY_WRITE_TOKEN": TOKEN,
        "SANITY_API_HOST": urls["sanity"],
        "FILESTACK_API_KEY": FILESTACK_KEY,
        "FILESTACK_PROCESS_URL": f"{urls['filestack']}/process",
        "SANITY_WEBHOOK_SECRET": SECRET,
        "CMS_SYNC_DATABASE": database,
        "CMS_SYNC_HTTP_PARSER": parser,
        "CMS_SYNC_LOG_LEVEL": "warning",
        "CMS_SYNC_LOG_FORMAT": "json",
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    serve = os.environ.get("BENCH_SERVE_PREFIX", "").split() or [sys.executable]
    command = [*serve, "-m", "cms_sync", "serve", "--port", str(port)]
    if split:
        command = [sys.executable, __file__, "--serve-split", str(port)]
    return subprocess.Popen(  # noqa: S603
        command,
        env=env,
        cwd=Path(tempfile.mkdtemp(dir=work)),
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a process group of its own, children included
    )


def _measure(
    parser: str,
    store: str,
    databases: tuple[str, str | None],
    levels: list[int],
    fakes: list[dict[str, str]],
    work: Path,
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
) -> list[Row]:
    try:
        ports = [free_port() for _ in range(3 if args.against else 2)]
        procs.append(
            subprocess.Popen(  # noqa: S603 - this script
                [sys.executable, __file__, "--serve-bare", str(ports[0]), "--parser", parser]
            )
        )
        procs.append(
            _service(ports[1], parser, databases[0], fakes[0], work, split=args.split_worker)
        )
        if args.against:
            assert databases[1] is not None
            procs.append(
                _service(ports[2], parser, databases[1], fakes[1], work, str(args.against))
            )
        wait_healthy(ports[0], procs[0], "/healthz")
        for port, proc in zip(ports[1:], procs[1:], strict=True):
            wait_healthy(port, proc, "/readyz")
        doc_ids = [f"product-{n}" for n in range(args.documents // 2)] + [
            f"post-{n}" for n in range(args.documents - args.documents // 2)
        ]
        rows = []
        for seed, level in enumerate(levels):
            requests = deliveries(doc_ids, seed)
            slice_seconds = args.seconds / args.slices
            results = [Result() for _ in ports]
            done = Counter[str]()
            # Alternating slices (bare, service, the other service, bare, ...), so that a
            # host that slows down or speeds up during the level does so for each server
            # alike. Every service but the one measured is stopped (SIGSTOP to its process
            # group: the service, its ingest writer and its worker's process), so that its
            # worker takes nothing meanwhile; the bare endpoint idles on its own.
            for n in range(args.slices):
                for which, port in enumerate(ports):
                    stopped = [p for i, p in enumerate(procs[1:], 1) if i != which]
                    for proc in stopped:
                        os.killpg(proc.pid, signal.SIGSTOP)
                    try:
                        if n == 0:  # warm up; a service's worker gets busy
                            asyncio.run(load(port, requests, level, min(1.0, args.seconds)))
                        if args.client == "wrk":  # written before the worker is counted
                            batch, whole = wrk_batch(requests, slice_seconds, work)
                        before = fake_calls(fakes[0]["sanity"]) if which == 1 else None
                        if args.client == "wrk":
                            sent = wrk_load(port, procs[which].pid, batch, level, whole)
                        else:
                            sent = measured_load(
                                port, procs[which].pid, requests, level, slice_seconds
                            )
                        results[which].add(sent)
                        if before is not None:
                            done.update(fake_calls(fakes[0]["sanity"]))
                            done.subtract(before)
                    finally:
                        for proc in stopped:
                            os.killpg(proc.pid, signal.SIGCONT)
            ours = results[1]
            theirs = results[2] if args.against else None
            rows.append(
                Row(
                    *(parser, store, level, ours, results[0]),
                    *(done["stored"] / ours.seconds, done["patched"] / ours.seconds),
                    theirs,
                )
            )
        return rows
    finally:
        stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per level and server")
    parser.add_argument(
        "--slices",
        type=int,
        default=4,
        help="the seconds of each level are taken in this many alternating slices "
        "(bare, service, bare, ...)",
    )
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--documents", type=int, default=300, help="documents in the fake")
    parser.add_argument(
        "--parser", default="httptools,h11", help="HTTP parsers to measure, each for both"
    )
    parser.add_argument(
        "--upstream-latency",
        type=float,
        default=0.04,
        help="seconds per Sanity call (a Filestack store takes six times as long)",
    )
    parser.add_argument(
        "--database",
        default="sqlite",
        help="stores to measure, comma-separated: sqlite, or a postgresql:// server URL "
        "(a fresh database is made on it for the run)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="also measure the service of another checkout (its source tree: DIR/cms_sync), "
        "in the same alternating slices, on a database of its own",
    )
    parser.add_argument(
        "--client",
        choices=["python", "wrk"],
        default="python",
        help="what sends the deliveries: this script's asyncio client, or wrk (apt-get "
        "install wrk; one thread; each slice rounded to whole seconds)",
    )
    parser.add_argument(
        "--split-worker",
        action="store_true",
        help="measure this service as `serve --no-worker` beside a second `serve` on the same "
        "database that runs the worker (both processes' CPU counted); --against stays whole",
    )
    parser.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-split", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fakes:
        serve_fakes(args.documents, args.upstream_latency)
        return
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.parser)
        return
    if args.serve_split is not None:
        serve_split(args.serve_split)
        return

    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--client wrk: no wrk on PATH (apt-get install wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=Path.cwd()))
    try:
        rows = [
            row
            for database in args.database.split(",")
            for name in args.parser.split(",")
            for row in measure(name, database, levels, work, args)
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nsigned deliveries sent by {args.client}, {args.seconds:g} s per level and server; "
        f"worker busy, Sanity calls taking {args.upstream_latency * 1000:g} ms\n"
    )
    against = " | against | its ratio | its p99" if args.against else ""
    print(
        "| store | parser | concurrency | this service | bare endpoint | ratio | our p50 "
        f"| our p99 | bare p99 | worker stores/s | patches/s | CPU/req ours | CPU/req bare "
        f"| client CPU/req | CPU ceiling{against} |"
    )
    print("|---" * (15 + 3 * bool(args.against)) + "|")
    cores = os.cpu_count() or 1
    for row in rows:
        ours, bare, theirs = row.ours, row.bare, row.theirs
        other = (
            f" | {theirs.rate:,.0f} req/s | {theirs.rate / bare.rate:.2f} | "
            f"{theirs.percentile(99):.1f} ms"
            if theirs is not None
            else ""
        )
        print(
            f"| {row.store} | {row.parser} | {row.level} | {ours.rate:,.0f} req/s | "
            f"{bare.rate:,.0f} req/s | "
            f"{ours.rate / bare.rate:.2f} | {ours.percentile(50):.1f} ms | "
            f"{ours.percentile(99):.1f} ms | {bare.percentile(99):.1f} ms | {row.stored:,.0f} | "
            f"{row.patched:,.0f} | "
            f"{ours.cpu_per_request('server'):.0f} µs | {bare.cpu_per_request('server'):.0f} µs | "
            f"{ours.cpu_per_request('client'):.0f} / {bare.cpu_per_request('client'):.0f} µs | "
            f"{ours.ceiling(cores) / bare.rate:.2f}{other} |"
        )
    statuses = Counter[str]()
    for row in rows:
        statuses.update(row.ours.statuses)
        if row.theirs is not None:
            statuses.update(row.theirs.statuses)
    print(f"\nservice answers: {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
