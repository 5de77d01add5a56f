"""A Filestack emulator: store-from-URL on ``POST /process``, and the stored bytes at ``/{handle}``.

The store contract is the one in WIRE.md: the ``apikey`` is checked; when an app secret is
set, the ``security`` task's policy and signature are verified (HMAC-SHA256 of the
base64 policy, an unexpired ``expiry``, ``store`` among the calls). The source URL is
fetched for real to learn its size and type. A store ``path`` ending in ``/`` is a folder
(a random prefix is added); a full path is the exact storage key, and a second store to it
overwrites the object: the deterministic key the worker relies on to make a repeated store
harmless.

To stay offline, sources are fetched only from loopback hosts unless a transport is given.

A transformation URL (``/resize=width:160/{handle}``, any tasks before the handle) serves
the stored bytes untransformed: enough for a page's thumbnails. ``PUT /_emulator/refuse``
with ``{"sources": [URL, ...]}`` makes stores of those sources fail as Filestack does when
it cannot fetch one (400 ``Invalid URL``) until the set is replaced; ``GET`` shows it. It is
the fault a demo or a browser test injects into a running emulator.

With a :class:`Notifier`, each store is also notified as Filestack's webhooks do: an
``fp.upload`` POST carrying the store's upload tags, signed with ``FS-Signature`` (hex
HMAC-SHA256 of ``"<FS-Timestamp>.<body>"``) and retried after 5 minutes, 30 minutes and
12 hours on anything but 200, 201 or 204. A store whose answer is lost (``lose_answer``)
is notified all the same: the file was stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from cms_sync.allowlist import is_loopback
from cms_sync.emulators.faults import Faults
from cms_sync.emulators.http import Handler, json_response, mime_for

#: Where a running emulator is told which sources to refuse (see the module docstring).
REFUSE_PATH = "/_emulator/refuse"
#: The most the emulator fetches of one source.
MAX_SOURCE = 64 * 1024 * 1024


@dataclass
class StoredFile:
    handle: str
    key: str
    filename: str
    data: bytes
    mime: str
    upload_tags: dict[str, str]


@dataclass
class Notification:
    """One webhook message and what became of it."""

    body: bytes
    #: The status of each attempt, or the name of the network error.
    attempts: list[int | str] = field(default_factory=list)
    #: "delivered" or "undelivered" (retries ran out); None while pending.
    outcome: str | None = None


@dataclass
class Notifier:
    """Filestack's webhooks for one application: one URL, one secret, one message at a time."""

    url: str
    secret: str
    #: Delays before each retry (Filestack's: 5 minutes, 30 minutes, 12 hours).
    retry_delays: tuple[float, ...] = (300.0, 1800.0, 43200.0)
    timeout: float = 30.0
    clock: Callable[[], float] = time.time
    transport: httpx.BaseTransport | None = None
    #: While cleared, messages wait (a webhook delayed); set to let them go.
    released: threading.Event = field(default_factory=lambda: _set_event())
    sent: list[Notification] = field(default_factory=list)
    _queue: queue.Queue[Notification | None] = field(default_factory=queue.Queue)
    _pending: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def notify(self, message: dict[str, Any]) -> Notification:
        notification = Notification(json.dumps(message, separators=(",", ":")).encode())
        with self._idle:
            self.sent.append(notification)
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
        self._queue.put(notification)
        return notification

    def wait_idle(self, timeout: float = 30) -> bool:
        """Block until every message so far is delivered or given up."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._stop.set()
        self.released.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
            while (notification := self._queue.get()) is not None:
                try:
                    self.released.wait()
                    self._deliver(client, notification)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def _deliver(self, client: httpx.Client, notification: Notification) -> None:
        for delay in (*self.retry_delays, None):
            timestamp = str(int(self.clock()))
            signed = timestamp.encode() + b"." + notification.body
            headers = {
                "content-type": "application/json",
                "fs-timestamp": timestamp,
                "fs-signature": hmac.new(self.secret.encode(), signed, hashlib.sha256).hexdigest(),
            }
            try:
                status: int | str = client.post(
                    self.url, content=notification.body, headers=headers
                ).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            notification.attempts.append(status)
            if status in (200, 201, 204):
                notification.outcome = "delivered"
                return
            if delay is None or self._stop.wait(delay):
                break
        notification.outcome = "undelivered"


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class Filestack:
    """Filestack's processing API, one application, in memory."""

    api_key: str = "emulator-key"
    app_secret: str | None = None
    #: Base of the URLs handed out; None uses the URL the store request came to.
    cdn: str | None = None
    container: str = "emulator-bucket"
    #: Fetches sources; None fetches loopback URLs over real sockets and refuses others.
    source_transport: httpx.BaseTransport | None = None
    fetch_timeout: float = 10.0
    faults: Faults | None = None
    clock: Callable[[], float] = time.time
    #: Sends an ``fp.upload`` for each store, when set.
    notifier: Notifier | None = None
    # -- what happened ----------------------------------------------------------------
    #: Every store request body that was carried out.
    stores: list[dict[str, Any]] = field(default_factory=list)
    #: Storage key -> handle of the object there: a store to an existing key overwrites it.
    objects: dict[str, str] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)
    # -- hooks ----------------------------------------------------------------------
    #: Sources refused with a 400, as if Filestack could not fetch them.
    refuse: set[str] = field(default_factory=set)
    #: Answers served (once each, in order) before normal handling.
    scripted: list[Handler] = field(default_factory=list)
    #: When set, it replaces (or raises instead of) each successful answer: an answer lost
    #: after the file was stored.
    lose_answer: Callable[[httpx.Response], httpx.Response] | None = None
    #: While set and not yet released, every store waits here (its source in ``held``).
    gate: threading.Event | None = None
    held: list[str] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _handler: Handler | None = field(default=None, init=False)
    _client: httpx.Client | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._handler = (
            self._serve
            if self.faults is None
            else self.faults.wrap(self._serve, is_mutation=lambda r: r.method == "POST")
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert self._handler is not None
        return self._handler(request)

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
        if self._client is not None:
            self._client.close()
        if self.faults is not None:
            self.faults.close()
        if self.gate is not None:
            self.gate.set()

    def _serve(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path.rstrip("/").endswith("/process"):
            return self._process(request)
        if path == REFUSE_PATH:
            return self._refusals(request)
        if request.method in ("GET", "HEAD") and len(path) > 1:
            *tasks, handle = path[1:].split("/")
            stored = self.files.get(handle)
            if stored is not None and all("=" in task for task in tasks):
                return httpx.Response(
                    200, content=stored.data, headers={"content-type": stored.mime}
                )
        return httpx.Response(404, text="Not Found")

    def _refusals(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            try:
                sources = json.loads(request.content)["sources"]
                if not isinstance(sources, list) or not all(isinstance(u, str) for u in sources):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                return json_response(400, {"error": 'expected {"sources": [URL, ...]}'})
            with self._lock:
                self.refuse.clear()
                self.refuse.update(sources)
        elif request.method != "GET":
            return json_response(405, {"error": "GET or PUT"})
        with self._lock:
            return json_response(200, {"sources": sorted(self.refuse)})

    def _process(self, request: httpx.Request) -> httpx.Response:
        try:
            body = json.loads(request.content)
            (source,) = body["sources"]
            store = next(t["params"] for t in body["tasks"] if t["name"] == "store")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration):
            return json_response(400, {"error": "Invalid request: one source and a store task"})
        if self.gate is not None and not self.gate.is_set():
            with self._lock:
                self.held.append(source)
                self.arrived.set()
            self.gate.wait(timeout=60)
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)(request)
        if body.get("apikey") != self.api_key:
            return httpx.Response(403, text="storage provider error: Invalid Application (idx 0)")
        problem = self._security_problem(body)
        if problem:
            return json_response(403, {"error": problem})
        if source in self.refuse:
            return httpx.Response(400, text=f"Invalid URL: could not fetch {source}")
        fetched = self._fetch(source)
        if isinstance(fetched, str):
            return httpx.Response(400, text=f"Invalid URL: {fetched}")
        data, fetched_type = fetched
        with self._lock:
            n = next(self._counter)
            handle = _handle(f"{n}:{source}")
            filename = store.get("filename") or urlsplit(source).path.rsplit("/", 1)[-1]
            path = store.get("path") or ""
            # A path ending in "/" is a folder (a random prefix is added); else the exact key.
            key = path if path and not path.endswith("/") else f"{path}{handle[:8]}_{filename}"
            mime = fetched_type or mime_for(filename)
            tags = body.get("upload_tags") or {}
            self.stores.append(body)
            self.objects[key] = handle
            self.files[handle] = StoredFile(handle, key, filename, data, mime, tags)
        base = self.cdn or f"{request.url.scheme}://{request.url.netloc.decode()}"
        stored = {
            "container": self.container,
            "filename": filename,
            "handle": handle,
            "key": key,
            "size": len(data),
            "type": mime,
            "url": f"{base}/{handle}",
        }
        if self.notifier is not None:
            text = {k: v for k, v in stored.items() if k != "handle"}  # fp.upload has none
            self.notifier.notify(
                {
                    "id": 30_000_000 + n,
                    "action": "fp.upload",
                    "timestamp": int(self.clock()),
                    "text": {**text, "client": "Computer", "status": "Stored", "upload_tags": tags},
                }
            )
        answer = json_response(200, stored)
        return answer if self.lose_answer is None else self.lose_answer(answer)

    def _fetch(self, source: str) -> tuple[bytes, str | None] | str:
        parts = urlsplit(source)
        if parts.scheme not in ("http", "https"):
            return f"unsupported scheme in {source}"
        if self.source_transport is None and not is_loopback(parts.hostname or ""):
            return f"the emulator fetches loopback URLs only, not {parts.hostname}"
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    transport=self.source_transport, timeout=self.fetch_timeout
                )
            client = self._client
        try:
            with client.stream("GET", source) as response:
                if response.status_code != 200:
                    return f"could not fetch {source}: HTTP {response.status_code}"
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_SOURCE:
                        return f"{source} is larger than {MAX_SOURCE} bytes"
                    chunks.append(chunk)
                kind = response.headers.get("content-type", "").split(";")[0].strip()
        except httpx.HTTPError as exc:
            return f"could not fetch {source}: {type(exc).__name__}"
        return b"".join(chunks), kind or None

    def _security_problem(self, body: dict[str, Any]) -> str | None:
        if self.app_secret is None:
            return None
        security = next((t["params"] for t in body["tasks"] if t["name"] == "security"), None)
        if not isinstance(security, dict):
            return "Invalid App policy: missing"
        policy_b64, signature = security.get("policy"), security.get("signature")
        if not isinstance(policy_b64, str) or not isinstance(signature, str):
            return "Invalid App policy: missing"
        expected = hmac.new(
            self.app_secret.encode(), policy_b64.encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return "Invalid App policy: signature"
        try:
            policy = json.loads(base64.urlsafe_b64decode(policy_b64))
            expiry = float(policy["expiry"])
        except (ValueError, KeyError, TypeError):
            return "Invalid App policy: malformed"
        if expiry < self.clock() or "store" not in policy.get("call", ["store"]):
            return "Invalid App policy: expired or not for store"
        return None


def _handle(seed: str) -> str:
    """20 characters, as Filestack's handles are."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest())
    chars = []
    for _ in range(20):
        number, r = divmod(number, len(alphabet))
        chars.append(alphabet[r])
    return "".join(chars)
