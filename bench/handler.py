"""The webhook handler's own cost, in one process: CPU per delivery, without sockets.

    python bench/handler.py [--deliveries 3000] [--rounds 5]

``bench/ingest.py`` measures over sockets, where two cores are shared by the client, the
server, its threads and the fakes, and the figures move with the host's load. This calls
the ASGI apps directly, one delivery after another, and reports the process's CPU time
per delivery (the best of ``--rounds``) for:

- ``bare``: the bare Starlette endpoint of ``bench/ingest.py`` (read the body, answer 202);
- ``handler``: ``cms-sync serve``'s app with the job store's ``accept`` replaced by one
  that writes nothing: signature, parsing, checks, events, response;
- ``durable``: the same app with its SQLite store (``synchronous=FULL``, on the disk of
  the current directory): every delivery written and fsync'd before its 202, alone in
  its batch. CPU here includes the ingest writer's process (which writes deliveries)
  and the kernel's share of the fsync.
- ``durable, 16 senders``: the same, 16 deliveries in flight at once, so that they share
  batches (group commit): the store's cost spread over a batch.

Over sockets both servers also pay uvicorn's protocol and the socket calls, the same
for each, so the ratio there is nearer 1 than ``bare / handler`` here; the difference
between the two CPU figures is what the service's own work costs the event loop per
delivery, and that is the figure to compare between versions. It is a benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "whsec-bench"  # noqa: S105 - the benchmark's own throwaway secret
ASGI = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


def bare_app() -> ASGI:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def accept(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "queued"}, status_code=202)

    return Starlette(routes=[Route("/webhooks/sanity", accept, methods=["POST"])])


def deliveries(count: int, run: int) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    from cms_sync import signature

    out = []
    for n in range(count):
        doc = f"post-{n % 300}"
        body = json.dumps({"_id": doc, "_type": "post", "_rev": "r"}).encode()
        sig = signature.sign(SECRET, body, int(time.time() * 1000))
        headers = [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"idempotency-key", f"bench-{run}-{n}".encode()),
            (b"sanity-operation", b"update"),
            (b"sanity-document-id", doc.encode()),
            (signature.HEADER.lower().encode(), sig.encode()),
        ]
        out.append((headers, body))
    return out


def _receiver(
    request: MutableMapping[str, Any],
) -> Callable[[], Awaitable[MutableMapping[str, Any]]]:
    """ASGI ``receive``: the request once, then a disconnect."""
    messages = [request]

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    return receive


def _cpu_of(pid: int | None) -> float:
    """CPU seconds of another process so far (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_delivery(
    app: ASGI,
    count: int,
    run: int,
    senders: int = 1,
    helper: Callable[[], int | None] = lambda: None,
) -> float:
    """CPU microseconds per delivery, answering ``count`` deliveries, ``senders`` at a
    time (each sender one after another); with the CPU of the ``helper`` process (the
    ingest writer) when there is one."""
    statuses: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    requests = deliveries(count, run)
    started = time.process_time() + _cpu_of(helper())
    await asyncio.gather(*(_sender(app, requests[n::senders], send) for n in range(senders)))
    spent = time.process_time() + _cpu_of(helper()) - started
    if set(statuses) != {202}:
        raise SystemExit(f"unexpected answers: {sorted(set(statuses))}")
    return spent / count * 1e6


async def _sender(
    app: ASGI,
    requests: list[tuple[list[tuple[bytes, bytes]], bytes]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    for headers, body in requests:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/sanity",
            "raw_path": b"/webhooks/sanity",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        receive = _receiver({"type": "http.request", "body": body, "more_body": False})
        await app(scope, receive, send)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=3000, help="per round")
    parser.add_argument("--rounds", type=int, default=5, help="the best round counts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-handler-", dir=Path.cwd()))
    os.environ.update(
        {
            "SANITY_PROJECT_ID": "cmsdemo",
            "SANITY_DATASET": "production",
            "SANITY_WRITE_TOKEN": "sk-bench",
            "SANITY_API_HOST": "http://127.0.0.1:9",  # never called: no worker runs
            "FILESTACK_API_KEY": "fs-bench",
            "SANITY_WEBHOOK_SECRET": SECRET,
            "CMS_SYNC_DATABASE": str(work / "cms-sync.db"),
        }
    )
    from cms_sync.app import WorkerMode, create_app
    from cms_sync.jobs import Accepted, JobRequest
    from cms_sync.log import configure_logging
    from cms_sync.mapping import default_mapping
    from cms_sync.settings import load_settings

    configure_logging(level="warning", fmt="json")  # as bench/ingest.py runs the service
    try:
        results: dict[str, float] = {}
        runs = iter(range(1_000_000))

        async def best(
            app: ASGI, senders: int = 1, helper: Callable[[], int | None] = lambda: None
        ) -> float:
            return min(
                [
                    await cpu_per_delivery(app, args.deliveries, next(runs), senders, helper)
                    for _ in range(args.rounds)
                ]
            )

        results["bare"] = await best(bare_app())
        app = create_app(load_settings(), mapping=default_mapping(), worker_mode=WorkerMode.NONE)
        async with app.router.lifespan_context(app):
            store = app.state.service.store
            await store.check_writable(budget=5)  # the ingest writer is started

            def writer() -> int | None:
                return store._ingest.pid  # type: ignore[no-any-return]

            durable = await best(app, helper=writer)
            durable_16 = await best(app, 16, helper=writer)
            real_accept = store.accept

            async def accept_nothing(
                key: str | None, requests: list[JobRequest], *, now: float
            ) -> Accepted:
                return Accepted(queued=tuple(r.document_id for r in requests))

            store.accept = accept_nothing
            results["handler"] = await best(app)
            store.accept = real_accept
        results["durable"], results["durable, 16 senders"] = durable, durable_16
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"one delivery at a time, best of {args.rounds} rounds of {args.deliveries}\n")
    print("| app | CPU per delivery | bare / this |")
    print("|---|---|---|")
    for name in results:
        print(f"| {name} | {results[name]:.0f} µs | {results['bare'] / results[name]:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
