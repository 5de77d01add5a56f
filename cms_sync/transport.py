"""Send one HTTP request and translate every failure into :mod:`cms_sync.errors`.

Shared by the Sanity and Filestack clients: a bounded response body, httpx's
exceptions mapped by whether the request can have been sent, and non-2xx statuses
mapped by class (4xx rejected, 429/5xx unavailable). Every message built here from what
the remote said is scrubbed of secrets: the configured ones, and those of the request
itself (an upstream that echoes the request would otherwise put them in our errors).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cms_sync.errors import (
    ConnectError,
    InvalidResponse,
    ResponseTimeout,
    TransportError,
    excerpt,
    status_error,
)
from cms_sync.events import CallEnded, Events, Remote
from cms_sync.scrub import Scrubber, request_secrets

#: Largest response body read into memory; API answers for one document are far smaller.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024

#: Given a non-2xx body parsed as JSON (or None), return (error type, description).
ErrorParser = Callable[[Any], tuple[str | None, str | None]]


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes
    #: Scrubs the configured secrets and the request's own from text built from the reply.
    scrub: Scrubber = field(default_factory=Scrubber)

    @property
    def text(self) -> str:
        """The body as text, scrubbed: the only way upstream text leaves this module."""
        return self.scrub(self.body.decode("utf-8", errors="replace"))

    def json_or_none(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _scrubber(request: httpx.Request, configured: Scrubber) -> Scrubber:
    body: Any = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(request.content)
        except ValueError:
            body = None
    return configured.adding(request_secrets(request.headers, body))


def _translate(
    service: str, request: httpx.Request, exc: httpx.TransportError, scrub: Scrubber
) -> TransportError:
    where = f"{request.method} {request.url.copy_with(query=None)}"
    # A protocol error can quote the bytes received, an echo of the request among them.
    detail = scrub(str(exc)) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectError(service, f"cannot connect ({where}): {detail}")
    if isinstance(exc, httpx.TimeoutException):
        return ResponseTimeout(service, f"no answer in time ({where}): {type(exc).__name__}")
    return TransportError(service, f"request failed ({where}): {detail}")


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    service: str,
    max_bytes: int = MAX_RESPONSE_BYTES,
    scrub: Scrubber | None = None,
    events: Events | None = None,
    operation: str = "call",
) -> Reply:
    """Send ``request`` and read at most ``max_bytes`` of the answer.

    Args:
        scrub: the configured secrets; the request's own are added.
        events: told of the call as ``operation`` (:class:`~cms_sync.events.CallEnded`),
            with the time to the whole answer or to the failure.

    Raises:
        TransportError: (or a subclass) no complete answer.
        InvalidResponse: the body is larger than ``max_bytes``.
    """
    if events is None:
        return await _exchange(client, request, service=service, max_bytes=max_bytes, scrub=scrub)
    remote, started = Remote(service.lower()), time.perf_counter()
    try:
        reply = await _exchange(client, request, service=service, max_bytes=max_bytes, scrub=scrub)
    except BaseException as exc:  # cancelled (a deadline) too: the call still took time
        status = exc.status if isinstance(exc, InvalidResponse) else None
        seconds = time.perf_counter() - started
        events.emit(CallEnded(remote, operation, seconds, status, type(exc).__name__))
        raise
    events.emit(CallEnded(remote, operation, time.perf_counter() - started, reply.status))
    return reply


async def _exchange(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    service: str,
    max_bytes: int,
    scrub: Scrubber | None,
) -> Reply:
    """Send ``request`` and read at most ``max_bytes`` of the answer.

    Raises:
        TransportError: (or a subclass) no complete answer.
        InvalidResponse: the body is larger than ``max_bytes``.
    """
    scrubber = _scrubber(request, scrub or Scrubber())
    try:
        response = await client.send(request, stream=True)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise InvalidResponse(
                        service, response.status_code, f"response larger than {max_bytes} bytes"
                    )
        finally:
            await response.aclose()
    except httpx.TransportError as exc:
        raise _translate(service, request, exc, scrubber) from exc
    reason = scrubber(response.reason_phrase or "")
    return Reply(
        status=response.status_code,
        reason=reason,
        headers=response.headers,
        body=bytes(body),
        scrub=scrubber,
    )


def raise_for_status(reply: Reply, *, service: str, parse_error: ErrorParser) -> None:
    """Raise the :class:`~cms_sync.errors.RemoteError` subclass for a non-2xx reply."""
    if 200 <= reply.status < 300:
        return
    error_type, description = parse_error(reply.json_or_none())
    raise status_error(
        service,
        reply.status,
        reply.reason,
        body=reply.text,
        error_type=error_type,
        description=excerpt(reply.scrub(description)) if description else None,
        headers=reply.headers,
    )


def json_body(reply: Reply, *, service: str) -> Any:
    """The reply's JSON body.

    Raises:
        InvalidResponse: not JSON.
    """
    try:
        return json.loads(reply.body)
    except ValueError:
        raise InvalidResponse(
            service,
            reply.status,
            f"expected JSON, got: {excerpt(reply.text, 120) or '(empty body)'}",
            body=reply.text,
        ) from None
