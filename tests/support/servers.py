"""Real sockets on 127.0.0.1: fakes served from a handler, and the app under uvicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import uvicorn

Handler = Callable[[httpx.Request], httpx.Response]
T = TypeVar("T")


def _request_handler(
    handler: Handler, requests: list[httpx.Request]
) -> type[BaseHTTPRequestHandler]:
    class _Adapter(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            host = self.headers.get("host", "127.0.0.1")
            request = httpx.Request(
                self.command,
                f"http://{host}{self.path}",
                headers=list(self.headers.items()),
                content=body,
            )
            requests.append(request)
            response = handler(request)
            payload = response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return _Adapter


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that died mid-request (the kill -9 test) is expected, not an error.
        pass


@contextmanager
def serve(handler: Handler) -> Iterator[tuple[str, list[httpx.Request]]]:
    """Yield (base URL, requests received) while ``handler`` serves on an ephemeral port."""
    requests: list[httpx.Request] = []
    server = _QuietServer(("127.0.0.1", 0), _request_handler(handler, requests))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class RunningApp:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread of its own."""

    url: str
    app: Any
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run ``fn()`` on the server's event loop (where the service's resources live)."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    @property
    def service(self) -> Any:
        return self.app.state.service


@contextmanager
def run_app(app: Any) -> Iterator[RunningApp]:
    """Serve ``app`` until the block ends; yields once its lifespan has started."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(server.serve(sockets=[sock])), daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        # Connections wait in the backlog until the lifespan is up: no polling needed.
        httpx.get(f"{url}/healthz", timeout=30).raise_for_status()
        yield RunningApp(url, app, loop)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        loop.close()
        sock.close()
