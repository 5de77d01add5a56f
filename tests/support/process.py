"""Run ``cms-sync`` commands as real processes, reading the service's JSON log as events."""

from __future__ import annotations

import contextlib
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
        args: tuple[str, ...] = (),
    ) -> None:
        """Start it, with limits as a service manager (or a full disk) would set them.

        Args:
            args: more of ``serve``'s arguments (``--no-worker``).
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

        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "cms_sync", "serve", "--port", "0", *args],
            env={**env, "CMS_SYNC_LOG_FORMAT": "json"},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit if open_files or file_size else None,
            start_new_session=True,  # a group of its own: the service and its children
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
        """SIGKILL to the service and every process it started (its worker's, its ingest
        writer): no shutdown code runs, as when a container or its machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
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
        self.kill()  # whatever of the group is left
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        assert shown_secrets(json.dumps(self.events)) == [], "a secret reached the log"


class DemoProcess:
    """``cms-sync demo --keep-running`` in the background, read line by line from stdout."""

    def __init__(self, env: dict[str, str], cwd: Path, *, database: str) -> None:
        self.database = database
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "cms_sync", "demo", "--keep-running", "--database", database],
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if predicate(line):
                return line
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("\n".join(self.lines[-20:]))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("cms-sync demo exited:\n" + "\n".join(self.lines[-20:]))
            self.lines.append(line)
            if predicate(line):
                return line

    def setting(self, name: str) -> str:
        """A ``  NAME=value`` line of the worker settings it prints."""
        line = self.wait_for_line(lambda text: text.startswith(f"  {name}="))
        return line.split("=", 1)[1]

    def worker_env(self) -> dict[str, str]:
        """Every setting it prints for pointing another worker at its emulators."""
        self.setting("CMS_SYNC_ALLOWED_ASSET_HOSTS")  # printed after the rest
        start = self.lines.index("Point another worker at the emulators with:") + 1
        pairs = (line.strip().split("=", 1) for line in self.lines[start:] if "=" in line)
        return {name: value for name, value in pairs}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C, as the demo says
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
