"""Run ``cms-sync`` commands as real processes, reading the service's JSON log as events."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leaks import shown_secrets


def cms_sync(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "cms_sync", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert shown_secrets(done.stdout + done.stderr) == [], f"cms-sync {args[0]} showed a secret"
    return done


class ServeProcess:
    """``cms-sync serve --port 0`` in the background; its port comes from its own log."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        *,
        open_files: int | None = None,
        file_size: int | None = None,
    ) -> None:
        """Start it, with limits as a service manager (or a full disk) would set them.

        Args:
            open_files: its soft RLIMIT_NOFILE.
            file_size: its RLIMIT_FSIZE: writes past this many bytes of a file fail
                (EFBIG; Python ignores SIGXFSZ), as on a full disk.
        """

        def limit() -> None:
            if open_files is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))
            if file_size is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cms_sync", "serve", "--port", "0"],
            env={**env, "CMS_SYNC_LOG_FORMAT": "json"},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit if open_files or file_size else None,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_for(lambda e: e.get("event") == "listening", 30)
        assert listening["host"] == "127.0.0.1", listening
        self.url = f"http://127.0.0.1:{listening['port']}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line.rstrip()}
            self._lines.put(event)
        self._lines.put(None)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """Block until a log event matches (events seen meanwhile are kept in ``events``)."""
        deadline = time.monotonic() + timeout
        for event in self.events:
            if predicate(event):
                return event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event; last: {self.events[-5:]}")
            try:
                event = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise RuntimeError(f"cms-sync serve exited: {self.events[-5:]}")
            self.events.append(event)
            if predicate(event):
                return event

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM, and check the shutdown was graceful: the lifespan closed, then the
        storage, and the process exited 0."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        while not self._lines.empty():
            event = self._lines.get_nowait()
            if event is not None:
                self.events.append(event)
        assert code == 0, code
        said = [str(e.get("event")) for e in self.events]
        assert "Application shutdown complete." in said, said[-5:]
        assert said[-1] == "stopped", said[-5:]  # logged after the storage closed

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        assert shown_secrets(json.dumps(self.events)) == [], "a secret reached the log"
