"""What both emulators share: the handler type, JSON answers, and a real socket to serve on.

An emulator is an ``httpx.Request -> httpx.Response`` handler. The same handler serves
``httpx.MockTransport`` in tests and a real socket through :func:`serve`, so tests,
demos and benchmarks meet one implementation. A handler that raises
``httpx.TransportError`` hangs up without an answer, as a crashed gateway would.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

Handler = Callable[[httpx.Request], httpx.Response]

#: The most an emulator reads of one request body (Sanity's mutation limit is 4 MB).
MAX_BODY = 8 * 1024 * 1024


_MIME = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "svg": "image/svg+xml",
    "pdf": "application/pdf",
}


def mime_for(filename: str) -> str:
    return _MIME.get(filename.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def _request_handler(
    handler: Handler, requests: list[httpx.Request]
) -> type[BaseHTTPRequestHandler]:
    class _Adapter(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The headers and the body go out as two writes. With Nagle's algorithm the body
        # waits for the client's delayed ACK of the headers: 40 ms added to every answer.
        disable_nagle_algorithm = True

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else b""
            host = self.headers.get("host", "127.0.0.1")
            request = httpx.Request(
                self.command,
                f"http://{host}{self.path}",
                headers=list(self.headers.items()),
                content=body,
            )
            requests.append(request)
            try:
                response = handler(request)
            except httpx.TransportError:
                self.close_connection = True  # an answer lost: hang up without one
                return
            payload = response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the emulators' users log what they need

    return _Adapter


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request (a killed worker) is expected, not an error.
        pass


def bind(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket, so a URL is known before the handler that needs it is built."""
    return socket.create_server((host, port), backlog=128)


@contextmanager
def serve(
    handler: Handler, sock: socket.socket | None = None
) -> Iterator[tuple[str, list[httpx.Request]]]:
    """Yield (base URL, requests received) while ``handler`` serves on ``sock``.

    Without ``sock`` it serves on an ephemeral port of 127.0.0.1.
    """
    requests: list[httpx.Request] = []
    sock = sock or bind()
    server = _QuietServer(
        sock.getsockname()[:2], _request_handler(handler, requests), bind_and_activate=False
    )
    server.socket.close()
    server.socket = sock
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
