"""``POST /webhooks/sanity``: verify, persist, acknowledge. The sync runs in the worker.

Status codes follow Sanity's delivery rules: 2xx is done, 4xx (not 429) is dropped, 5xx is
retried for up to 30 minutes. So: 202 once the job is on disk, 200 for a repeat or for a
delivery with nothing to queue, 400/401/413 for deliveries that can never succeed (413:
a body over the byte limit, or more documents than allowed), and 503 only when the job
store cannot be written, so that Sanity tries again.

The endpoint is a plain ASGI app on its Starlette route (Starlette still matches the path
and method, and its error middleware still answers 500 for a bug), not a function over
``Request`` and ``JSONResponse``: it is the one path that takes every delivery, and those
two objects and the wrappers around them cost more per delivery than the signature, the
parsing and the store's write together (``bench/README.md``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from cms_sync import signature
from cms_sync.deliveries import parse_delivery
from cms_sync.errors import (
    DeliveryTooLarge,
    MalformedDelivery,
    SignatureError,
    StoreUnavailable,
)
from cms_sync.events import DeliveryEnded, DeliveryOutcome
from cms_sync.jobs import JobSource
from cms_sync.service import Service

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


def plain_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as a plain dict (the first of repeated names, as Starlette's
    ``Headers.get`` would answer): a handful of lookups per delivery cost half as much."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(scope["headers"])
    }


async def receive_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    """The raw body from ASGI ``receive``, refused (without reading the rest) once it
    passes ``limit`` bytes.

    Args:
        declared: the Content-Length header, if any.

    Raises:
        BodyTooLarge: declared or found larger than ``limit``.
        ClientDisconnect: the client went away.
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        if chunk:
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge
        if not message.get("more_body", False):
            return body


async def read_body(request: Request, limit: int) -> bytes:
    """:func:`receive_body` of a Starlette request."""
    return await receive_body(request.receive, limit, request.headers.get("content-length"))


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


#: Starlette's ``JSONResponse`` encoding, made once (``json.dumps`` with options other
#: than the defaults builds an encoder for every call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json(content: object) -> bytes:
    """The bytes Starlette's ``JSONResponse`` would send."""
    return _ENCODER.encode(content).encode("utf-8")


_START_500: Message = {
    "type": "http.response.start",
    "status": 500,
    "headers": [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")],
}
_BODY_500: Message = {"type": "http.response.body", "body": b"Internal Server Error"}


class SanityWebhook:
    """The endpoint: an ASGI app that reads the service from the Starlette app's state."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: Service = scope["app"].state.service
        headers = plain_headers(scope)
        key = headers.get("idempotency-key")
        # bind and reset, not bound_contextvars(): this runs per delivery, and that
        # context manager copies every bound variable on the way in and out.
        tokens = structlog.contextvars.bind_contextvars(
            delivery_id=key, source=JobSource.WEBHOOK.value
        )
        try:
            status, body = await _handle(receive, headers, service, key)
        except Exception:
            # A bug: answered as Starlette's error middleware would (nothing is sent
            # before the answer), and raised on for the server to log.
            await send(_START_500)
            await send(_BODY_500)
            raise
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, _json({"error": message})


def _ended(
    service: Service, outcome: DeliveryOutcome, status: int, message: str
) -> tuple[int, bytes]:
    service.events.emit(DeliveryEnded(outcome, message))
    return _error(status, message)


async def _handle(
    receive: Receive, headers: dict[str, str], service: Service, key: str | None
) -> tuple[int, bytes]:
    try:
        body = await receive_body(receive, service.max_body, headers.get("content-length"))
    except BodyTooLarge:
        return _ended(
            service, DeliveryOutcome.TOO_LARGE, 413, f"body larger than {service.max_body} bytes"
        )
    except ClientDisconnect:
        return _ended(service, DeliveryOutcome.MALFORMED, 400, "client disconnected")
    if service.webhook_secret is not None:
        try:
            signature.verify(
                headers.get(signature.HEADER),
                body,
                service.webhook_secret.get_secret_value(),
                tolerance=service.signature_tolerance,
                now=service.clock(),
            )
        except SignatureError as exc:
            return _ended(service, DeliveryOutcome.UNAUTHORIZED, 401, f"invalid signature: {exc}")
    else:
        log.warning("delivery_unverified", reason="--insecure-skip-signature")
    try:
        delivery = parse_delivery(
            body, headers, service.mapping, max_documents=service.max_documents
        )
    except MalformedDelivery as exc:
        return _ended(service, DeliveryOutcome.MALFORMED, 400, str(exc))
    except DeliveryTooLarge as exc:
        return _ended(service, DeliveryOutcome.TOO_LARGE, 413, str(exc))
    documents = [r.document_id for r in delivery.requests] + [i for i, _ in delivery.ignored]
    structlog.contextvars.bind_contextvars(document_id=",".join(documents) or None)
    ignored = tuple({"id": doc_id, "reason": reason} for doc_id, reason in delivery.ignored)
    if not delivery.requests:
        service.events.emit(DeliveryEnded(DeliveryOutcome.IGNORED, ignored=ignored))
        return 200, _json({"status": "ignored", "ignored": list(ignored)})
    try:
        accepted = await service.store.accept(key, delivery.requests, now=service.clock())
    except StoreUnavailable as exc:
        service.events.emit(DeliveryEnded(DeliveryOutcome.UNAVAILABLE, str(exc)))
        return _error(503, "job store unavailable; retry later")
    if accepted.duplicate:
        service.events.emit(DeliveryEnded(DeliveryOutcome.DUPLICATE))
        return 200, _json({"status": "duplicate"})
    service.worker.wake()
    service.events.emit(
        DeliveryEnded(
            DeliveryOutcome.QUEUED,
            queued=accepted.queued,
            coalesced=accepted.coalesced,
            ignored=ignored,
        )
    )
    result: dict[str, Any] = {
        "status": "queued",
        "queued": list(accepted.queued),
        "coalesced": list(accepted.coalesced),
        "ignored": list(ignored),
    }
    return 202, _json(result)
