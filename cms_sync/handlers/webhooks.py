"""``POST /webhooks/sanity``: verify, persist, acknowledge. The sync runs in the worker.

Status codes follow Sanity's delivery rules: 2xx is done, 4xx (not 429) is dropped, 5xx is
retried for up to 30 minutes. So: 202 once the job is on disk, 200 for a repeat or for a
delivery with nothing to queue, 400/401/413 for deliveries that can never succeed (413:
a body over the byte limit, or more documents than allowed), and 503 only when the job
store cannot be written, so that Sanity tries again.
"""

from __future__ import annotations

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


class BodyTooLarge(Exception):
    pass


def plain_headers(request: Request) -> dict[str, str]:
    """The request's headers as a plain dict (the first of repeated names, as Starlette's
    ``Headers.get`` would answer): a handful of lookups per delivery cost half as much."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(request.scope["headers"])
    }


async def read_body(request: Request, limit: int, declared: str | None = None) -> bytes:
    """The raw body, refused (without reading the rest) once it passes ``limit`` bytes.

    Args:
        declared: the Content-Length header, if the caller has it at hand.

    Raises:
        BodyTooLarge: declared or found larger than ``limit``.
        ClientDisconnect: the client went away.
    """
    if declared is None:
        declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def sanity_webhook(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    headers = plain_headers(request)
    key = headers.get("idempotency-key")
    # bind and reset, not bound_contextvars(): this runs per delivery, and that
    # context manager copies every bound variable on the way in and out.
    tokens = structlog.contextvars.bind_contextvars(delivery_id=key, source=JobSource.WEBHOOK.value)
    try:
        return await _handle(request, headers, service, key)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def _ended(service: Service, outcome: DeliveryOutcome, status: int, message: str) -> JSONResponse:
    service.events.emit(DeliveryEnded(outcome, message))
    return error(status, message)


async def _handle(
    request: Request, headers: dict[str, str], service: Service, key: str | None
) -> JSONResponse:
    try:
        body = await read_body(request, service.max_body, headers.get("content-length"))
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
        return JSONResponse({"status": "ignored", "ignored": list(ignored)})
    try:
        accepted = await service.store.accept(key, delivery.requests, now=service.clock())
    except StoreUnavailable as exc:
        service.events.emit(DeliveryEnded(DeliveryOutcome.UNAVAILABLE, str(exc)))
        return error(503, "job store unavailable; retry later")
    if accepted.duplicate:
        service.events.emit(DeliveryEnded(DeliveryOutcome.DUPLICATE))
        return JSONResponse({"status": "duplicate"})
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
    return JSONResponse(result, status_code=202)
