"""GROQ-powered webhooks, delivered as Sanity delivers them.

Each webhook has a URL, a filter evaluated in delta mode, a projection and a secret. A
matching change is posted with Sanity's headers and signature: ``sanity-webhook-signature:
t=<unix ms>,v1=<base64url HMAC-SHA256 of "<t>.<body>">``, with an ``idempotency-key``
that stays the same across retries. One delivery is in flight per webhook; 2xx is done,
4xx other than 429 is dropped, and 429, 5xx and network errors are retried with
exponential backoff for up to ``retry_for`` seconds (Sanity: 30 minutes).

The signing here is written from Sanity's documentation, not shared with the worker's
verifier: the emulator must not be built from the client's assumptions.
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
from datetime import UTC, datetime
from typing import Any

import httpx

from cms_sync import groq


@dataclass(frozen=True)
class Webhook:
    """A webhook definition, as in sanity.io/manage or ``sanity hook create``."""

    url: str
    secret: str | None = None
    #: A GROQ expression in delta mode; empty matches every change.
    filter: str = ""
    #: A projection such as ``{_id, _type, _rev}``; empty sends the whole document.
    projection: str = ""
    on: tuple[str, ...] = ("create", "update", "delete")
    include_drafts: bool = False
    id: str = "emulator-webhook"

    def __post_init__(self) -> None:
        # A bad filter or projection is refused when the webhook is made, as Sanity does.
        if self.filter.strip():
            groq.parse(self.filter, mode="delta")
        if self.projection.strip():
            groq.parse("@" + self.projection, mode="delta")
        unknown = set(self.on) - {"create", "update", "delete"}
        if unknown:
            raise ValueError(f"unknown webhook trigger(s): {', '.join(sorted(unknown))}")

    def message(
        self, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> tuple[str, bytes] | None:
        """The operation and body for this change, or None when the webhook does not fire."""
        doc = after if after is not None else before
        if doc is None:
            return None
        if not self.include_drafts and doc["_id"].startswith(("drafts.", "versions.")):
            return None
        operation = "create" if before is None else "delete" if after is None else "update"
        if operation not in self.on:
            return None
        if self.filter.strip():
            matched = groq.evaluate(self.filter, [], root=doc, before=before, after=after)
            if matched is not True:
                return None
        projected = (
            groq.evaluate("@" + self.projection, [], root=doc, before=before, after=after)
            if self.projection
            else doc
        )
        return operation, json.dumps(projected, separators=(",", ":")).encode()


def signature_header(secret: str, body: bytes, timestamp_ms: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp_ms}.".encode() + body, hashlib.sha256).digest()
    return f"t={timestamp_ms},v1={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


@dataclass
class Delivery:
    """One message and what became of it."""

    webhook: Webhook
    operation: str
    document_id: str
    body: bytes
    headers: dict[str, str]
    #: The status of each attempt, or the name of the network error.
    attempts: list[int | str] = field(default_factory=list)
    #: "delivered", "dropped" (a 4xx) or "expired" (retries ran out); None while pending.
    outcome: str | None = None


@dataclass
class Dispatcher:
    """Posts each webhook's messages, one in flight per webhook, retrying as Sanity does."""

    project_id: str
    dataset: str
    timeout: float = 30.0
    #: First retry delay in seconds, doubled per attempt up to ``max_delay``.
    base_delay: float = 1.0
    max_delay: float = 60.0
    retry_for: float = 30 * 60
    clock: Callable[[], float] = time.time
    transport: httpx.BaseTransport | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _queues: dict[str, queue.Queue[Delivery | None]] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _pending: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def enqueue(
        self, webhook: Webhook, operation: str, document_id: str, body: bytes, tx: str, when: str
    ) -> Delivery:
        headers = {
            "content-type": "application/json",
            "user-agent": "Sanity.io webhooks (cms-sync emulator)",
            "idempotency-key": f"msg_{tx}_{next(self._ids):06d}",
            "sanity-operation": operation,
            "sanity-document-id": document_id,
            "sanity-transaction-id": tx,
            "sanity-transaction-time": when,
            "sanity-dataset": self.dataset,
            "sanity-project-id": self.project_id,
            "sanity-webhook-id": webhook.id,
        }
        delivery = Delivery(webhook, operation, document_id, body, headers)
        with self._idle:
            self.deliveries.append(delivery)
            self._pending += 1
        self._queue(webhook).put(delivery)
        return delivery

    def wait_idle(self, timeout: float = 30) -> bool:
        """Block until every message so far is delivered, dropped or expired."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._stop.set()
        for q in self._queues.values():
            q.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _queue(self, webhook: Webhook) -> queue.Queue[Delivery | None]:
        with self._idle:
            if webhook.id not in self._queues:
                self._queues[webhook.id] = queue.Queue()
                thread = threading.Thread(
                    target=self._run, args=(self._queues[webhook.id],), daemon=True
                )
                self._threads.append(thread)
                thread.start()
            return self._queues[webhook.id]

    def _run(self, messages: queue.Queue[Delivery | None]) -> None:
        with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
            while (delivery := messages.get()) is not None:
                try:
                    self._deliver(client, delivery)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        started = self.clock()
        for attempt in itertools.count():
            headers = dict(delivery.headers)
            if delivery.webhook.secret:
                t = int(self.clock() * 1000)
                headers["sanity-webhook-signature"] = signature_header(
                    delivery.webhook.secret, delivery.body, t
                )
            try:
                status: int | str = client.post(
                    delivery.webhook.url, content=delivery.body, headers=headers
                ).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            delivery.attempts.append(status)
            if isinstance(status, int) and 200 <= status < 300:
                delivery.outcome = "delivered"
                return
            if isinstance(status, int) and status < 500 and status != 429:
                delivery.outcome = "dropped"
                return
            delay = min(self.max_delay, self.base_delay * 2**attempt)
            if self._stop.is_set() or self.clock() + delay - started > self.retry_for:
                delivery.outcome = "expired"
                return
            if self._stop.wait(delay):
                delivery.outcome = "expired"
                return


def transaction_time(epoch: float) -> str:
    """ISO-8601 with milliseconds and ``Z``, as Sanity writes ``_updatedAt``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
