"""Real sockets on 127.0.0.1: emulators served from a handler, and the app under uvicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import uvicorn

from cms_sync.emulators import serve

__all__ = ["RunningApp", "run_app", "serve"]
T = TypeVar("T")


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
