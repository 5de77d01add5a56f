"""``POST /webhooks/filestack``: Filestack's notifications of stored files.

What a notification of one of our stores does is the job store's (``confirm_store``): it
completes an asset whose store's answer was lost, so its documents are patched with no
further store, or records a second handle of an asset as an orphan.

Filestack retries anything but 200, 201 and 204 (at 5 minutes, 30 minutes and 12 hours),
so: 200 for everything handled, ignored or seen before; 401 for a bad or stale signature
(the text never holds the expected signature); 400 for a body that is not a notification;
413 over the byte limit; 503 when the store cannot be written, so that Filestack retries;
404 while ``FILESTACK_WEBHOOK_SECRET`` is unset.
"""

from __future__ import annotations

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from cms_sync import filestack_notices as notices
from cms_sync.errors import SignatureError, StoreUnavailable
from cms_sync.events import NoticeEnded, NoticeOutcome
from cms_sync.handlers.webhooks import BodyTooLarge, error, read_body
from cms_sync.service import Service


async def filestack_webhook(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    if service.filestack_secret is None:
        return error(404, "Filestack webhooks are not configured (FILESTACK_WEBHOOK_SECRET)")
    tokens = structlog.contextvars.bind_contextvars(source="filestack")
    try:
        return await _handle(request, service)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def _ended(service: Service, outcome: NoticeOutcome, status: int, message: str) -> JSONResponse:
    service.events.emit(NoticeEnded(outcome, message))
    return error(status, message)


async def _handle(request: Request, service: Service) -> JSONResponse:
    assert service.filestack_secret is not None
    try:
        body = await read_body(request, service.max_body)
    except BodyTooLarge:
        return _ended(
            service, NoticeOutcome.TOO_LARGE, 413, f"body larger than {service.max_body} bytes"
        )
    except ClientDisconnect:
        return _ended(service, NoticeOutcome.MALFORMED, 400, "client disconnected")
    try:
        notices.verify(
            request.headers.get(notices.SIGNATURE_HEADER),
            request.headers.get(notices.TIMESTAMP_HEADER),
            body,
            service.filestack_secret.get_secret_value(),
            max_age=service.filestack_max_age,
            now=service.clock(),
        )
    except SignatureError as exc:
        return _ended(service, NoticeOutcome.UNAUTHORIZED, 401, f"invalid signature: {exc}")
    try:
        notice = notices.parse(body, dataset=service.dataset_tag)
    except notices.MalformedNotice as exc:
        return _ended(service, NoticeOutcome.MALFORMED, 400, str(exc))
    if isinstance(notice, notices.NotOurs):
        structlog.contextvars.bind_contextvars(
            delivery_id=notices.delivery_id(notice.event_id or "-")
        )
        service.events.emit(NoticeEnded(NoticeOutcome.IGNORED, notice.reason))
        return JSONResponse({"status": "ignored", "reason": notice.reason})
    structlog.contextvars.bind_contextvars(
        delivery_id=notice.delivery_id, document_id=notice.document_id
    )
    try:
        confirmed = await service.store.confirm_store(notice, now=service.clock())
    except StoreUnavailable as exc:
        service.events.emit(NoticeEnded(NoticeOutcome.UNAVAILABLE, str(exc)))
        return error(503, "job store unavailable; retry later")
    if confirmed.queued:
        service.worker.wake()
    outcome = NoticeOutcome(confirmed.outcome.value)
    service.events.emit(
        NoticeEnded(outcome, confirmed.reason, notice.asset_id, notice.handle, confirmed.queued)
    )
    answer: dict[str, object] = {"status": outcome.value, "asset_id": notice.asset_id}
    if confirmed.queued:
        answer["queued"] = list(confirmed.queued)
    if confirmed.reason:
        answer["reason"] = confirmed.reason
    return JSONResponse(answer)
