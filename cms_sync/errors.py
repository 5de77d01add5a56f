"""The one exception hierarchy of cms-sync.

```
CmsSyncError
├── ConfigError                  bad settings or media mapping (exit 2)
├── WebhookError                 a webhook delivery we must refuse
│   ├── SignatureError           missing, malformed or wrong signature (401)
│   ├── MalformedDelivery        not JSON, too deep, or no valid document id (400)
│   └── DeliveryTooLarge         names more documents than allowed (413)
├── StoreUnavailable             the job store cannot be read or written (503)
├── InternalError                a bug surfaced while running a job (retried, then failed)
├── TransportError               no usable HTTP response; the request may have been sent
│   ├── ConnectError             the request was never sent (connect refused/timed out, pool full)
│   └── ResponseTimeout          sent, but no answer in time
├── RemoteError                  the service answered with something we cannot use
│   ├── RejectedError            4xx (not 429): retrying the same request will not help
│   │   ├── AuthenticationError  401/403
│   │   └── RevisionConflict     409 documentRevisionIDDoesNotMatchError (refetch and replan)
│   ├── UnavailableError         429 or 5xx: overloaded or broken, try later
│   │   └── RateLimited          429
│   └── InvalidResponse          2xx whose body is not what the API promises
└── SyncError                    a problem with the document itself
    ├── DocumentNotFound         no published document with that id
    ├── UnmappedType             the document's type is not in the media mapping
    ├── SlotBlocked              a media slot that cannot be synced as it is (asset host not
    │                            allow-listed, array item without _key, asset without URL)
    ├── StaleRead                the document is older than the delivery that announced it
    └── StoreUnanswered          a store of this asset may have happened without us seeing it
        ├── AmbiguousStore       this attempt's answer was lost (5xx, timeout, no handle)
        ├── StoreDeferred        an earlier answer was lost: waiting out the asset's backoff
        └── StoreGaveUp          too many unanswered stores: an operator must look (failed)
```

Third-party errors (httpx, pydantic) are translated at the client boundary with
``raise ... from exc``; retry and dead-letter decisions are made from these types.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping

_EXCERPT_LIMIT = 300
_WHITESPACE = re.compile(r"\s+")


def excerpt(text: str, limit: int = _EXCERPT_LIMIT) -> str:
    """Collapse a response body into one short line for messages and logs."""
    flat = _WHITESPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``retry-after`` header (delta-seconds or HTTP-date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0
    return seconds


class CmsSyncError(Exception):
    """Base of every error cms-sync raises on purpose."""


class ConfigError(CmsSyncError):
    """A setting or the media mapping is missing or invalid."""


class WebhookError(CmsSyncError):
    """A webhook delivery that is refused."""


class SignatureError(WebhookError):
    """The ``sanity-webhook-signature`` is missing, malformed or does not match."""


class MalformedDelivery(WebhookError):
    """The delivery body is not JSON (or nested too deep), or names no valid document."""


class DeliveryTooLarge(WebhookError):
    """The delivery names more documents than ``CMS_SYNC_WEBHOOK_MAX_DOCUMENTS``."""


class StoreUnavailable(CmsSyncError):
    """The job store could not be read or written."""


class InternalError(CmsSyncError):
    """An unexpected exception inside a job: a bug, recorded rather than fatal."""


class TransportError(CmsSyncError):
    """No usable HTTP response arrived; the request may or may not have been processed."""

    #: Whether the request may have reached the server (a store must not be retried then).
    maybe_sent = True

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class ConnectError(TransportError):
    """The request was never sent: connecting failed or timed out, or no connection was free."""

    maybe_sent = False


class ResponseTimeout(TransportError):
    """The request was sent but no complete answer came in time."""


class RemoteError(CmsSyncError):
    """The remote service answered with a status or body we cannot use."""

    def __init__(
        self,
        service: str,
        status: int,
        message: str,
        *,
        body: str = "",
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status
        self.body = excerpt(body)
        self.error_type = error_type
        self.retry_after = retry_after


class RejectedError(RemoteError):
    """A 4xx other than 429: the same request will be rejected again."""


class AuthenticationError(RejectedError):
    """401 or 403: the credentials are missing, wrong or lack a permission."""


class RevisionConflict(RejectedError):
    """409: the document changed since we read it (``ifRevisionID`` did not match)."""

    #: Which mutation of the request conflicted (Sanity's ``items[].index``), if said.
    index: int | None = None


class UnavailableError(RemoteError):
    """429 or 5xx: the service is overloaded or broken; the request may succeed later."""


class RateLimited(UnavailableError):
    """429: over the rate limit."""


class InvalidResponse(RemoteError):
    """A 2xx whose body is not what the API promises (not JSON, or a field missing)."""


class SyncError(CmsSyncError):
    """A problem with the document being synced rather than with a service."""


class DocumentNotFound(SyncError):
    def __init__(self, document_id: str) -> None:
        super().__init__(f"no published document with id {document_id!r}")
        self.document_id = document_id


class UnmappedType(SyncError):
    def __init__(self, document_id: str, doc_type: str, known: list[str]) -> None:
        super().__init__(
            f"document {document_id!r} has type {doc_type!r}; "
            f"the media mapping lists {', '.join(sorted(known)) or 'no types'}"
        )
        self.document_id = document_id
        self.doc_type = doc_type


class SlotBlocked(SyncError):
    def __init__(self, slot: str, reason: str) -> None:
        super().__init__(f"{slot}: {reason}")
        self.slot = slot
        self.reason = reason


class StaleRead(SyncError):
    """The fetched revision predates the delivery: the read replica has not caught up."""

    def __init__(self, document_id: str, updated_at: str | None, announced_at: float) -> None:
        super().__init__(
            f"document {document_id!r} was updated at {updated_at}, "
            f"older than the delivery's transaction time ({announced_at:.3f})"
        )
        self.document_id = document_id


def status_error(
    service: str,
    status: int,
    reason: str,
    *,
    body: str,
    error_type: str | None,
    description: str | None,
    headers: Mapping[str, str],
) -> RemoteError:
    """Build the right :class:`RemoteError` subclass for a non-2xx answer.

    ``error_type`` is the most specific type the body names (for a Sanity mutation error,
    the first item's type, e.g. ``documentRevisionIDDoesNotMatchError``).
    """
    detail = description or excerpt(body)
    message = f"HTTP {status} {reason}".rstrip() + (f": {detail}" if detail else "")
    cls: type[RemoteError]
    if status == 429:
        cls = RateLimited
    elif status >= 500:
        cls = UnavailableError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 409 and error_type == "documentRevisionIDDoesNotMatchError":
        cls = RevisionConflict
    else:
        cls = RejectedError
    retry_after = None
    if issubclass(cls, UnavailableError):
        retry_after = parse_retry_after(headers.get("retry-after"))
    return cls(service, status, message, body=body, error_type=error_type, retry_after=retry_after)


class StoreUnanswered(SyncError):
    """A store of one asset may have reached Filestack without us learning its handle.

    ``retry_at`` (unix seconds) is when the asset may be stored again; None when never
    without an operator (``StoreGaveUp``).
    """

    def __init__(self, asset_id: str, message: str, *, retry_at: float | None) -> None:
        super().__init__(message)
        self.asset_id = asset_id
        self.retry_at = retry_at


class AmbiguousStore(StoreUnanswered):
    """This store's answer was lost: Filestack may have stored the file anyway."""

    def __init__(
        self, asset_id: str, cause: CmsSyncError, *, attempts: int, retry_at: float
    ) -> None:
        super().__init__(
            asset_id,
            f"store of asset {asset_id} unanswered ({cause}); unanswered stores of it so "
            f"far: {attempts}; next try not before {_clock(retry_at)}",
            retry_at=retry_at,
        )
        self.cause = cause
        self.attempts = attempts


class StoreDeferred(StoreUnanswered):
    """An earlier store of this asset is in flight or went unanswered: wait before another."""

    def __init__(self, asset_id: str, *, attempts: int, retry_at: float) -> None:
        super().__init__(
            asset_id,
            f"asset {asset_id}: {attempts} earlier store(s) unanswered or still in flight; "
            f"next try not before {_clock(retry_at)}",
            retry_at=retry_at,
        )
        self.attempts = attempts


class StoreGaveUp(StoreUnanswered):
    """The cap on unanswered stores of an asset is reached: storing again could copy it again."""

    def __init__(
        self, asset_id: str, *, attempts: int, storage_key: str | None, last_error: str | None
    ) -> None:
        where = f"at storage key {storage_key!r} " if storage_key else ""
        super().__init__(
            asset_id,
            f"asset {asset_id}: gave up after {attempts} unanswered stores"
            + (f" (last: {last_error})" if last_error else "")
            + f"; Filestack may hold copies {where}with upload tag sanity_asset_id={asset_id}; "
            "check them, then `cms-sync replay` the document to try again",
            retry_at=None,
        )
        self.attempts = attempts
        self.storage_key = storage_key


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
