"""Filestack's webhook notifications: the signature, and what a notification says. Pure.

Filestack signs each notification with the webhook's own secret (made in the developer
portal; it is not the app secret): ``FS-Signature`` is the lowercase hex HMAC-SHA256 of
``"<FS-Timestamp>.<raw body>"``, ``FS-Timestamp`` being unix seconds. filestack-python's
``verify_webhook_signature`` computes the same digest (a test pins the agreement) but is not
used on the request path: it compares with ``!=`` and its error text carries the correct
signature, which an endpoint that returns that text hands to a forger.

An ``fp.upload`` notification says a file was stored::

    {"id": 30813791, "action": "fp.upload", "timestamp": 1521733983,
     "text": {"container": "...", "url": "https://cdn.filestackcontent.com/HANDLE",
              "filename": "...", "client": "Computer", "key": "S3_KEY", "type": "MIMETYPE",
              "status": "Stored", "size": 158584, "upload_tags": {"...": "..."}}}

Filestack's upload-tags documentation says the tags of a store come back in its webhook;
its examples do not agree on where (inside ``text`` or beside it), so both are read. An
``fp.converse`` (a processing result stored) carries ``text.link`` with ``handle``,
``path``, ``size`` and ``mimetype``; it is read the same way. Which of the two a
``/process`` store from URL emits is not documented: see the README.

Our stores carry the tags ``sanity_asset_id``, ``sanity_document_id``, ``sanity_dataset``
(``<project>/<dataset>``) and ``cms_sync_store`` (which of the asset's stores it was). A
notification without them, or for another dataset, is not ours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cms_sync.errors import SignatureError

SIGNATURE_HEADER = "fs-signature"
TIMESTAMP_HEADER = "fs-timestamp"
#: A notification's idempotency key is this and its id: its jobs carry it as their
#: ``delivery_id``, which is how a retry knows a notification made the job due.
DELIVERY_PREFIX = "filestack:"
#: The actions that report a stored file.
STORE_ACTIONS = ("fp.upload", "fp.converse")

# The upload tags our stores carry.
TAG_ASSET = "sanity_asset_id"
TAG_DOCUMENT = "sanity_document_id"
TAG_DATASET = "sanity_dataset"
TAG_STORE = "cms_sync_store"

_TIMESTAMP = re.compile(r"^\d{1,12}$")  # unix seconds; a longer number is not a timestamp
_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
_HANDLE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def compute(secret: str, body: bytes, timestamp: str) -> str:
    """The ``FS-Signature`` of ``body`` sent at ``timestamp`` (the header's text)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    secret: str,
    *,
    max_age: float,
    now: float,
) -> int:
    """Check a notification's signature and freshness; return its timestamp (unix s).

    Raises:
        SignatureError: a header missing or malformed, a wrong signature, or a timestamp
            more than ``max_age`` seconds from ``now``. The message never holds the
            expected signature.
    """
    if not signature or not timestamp:
        raise SignatureError("missing FS-Signature or FS-Timestamp header")
    timestamp, signature = timestamp.strip(), signature.strip()
    if not _TIMESTAMP.match(timestamp) or not _SIGNATURE.match(signature):
        raise SignatureError("malformed FS-Signature or FS-Timestamp header")
    expected = compute(secret, body, timestamp)
    if not hmac.compare_digest(expected, signature.lower()):
        raise SignatureError("signature does not match")
    age = now - int(timestamp)
    if abs(age) > max_age:
        raise SignatureError(f"signature timestamp is {age:.0f} s away from now")
    return int(timestamp)


@dataclass(frozen=True)
class StoreNotice:
    """Filestack's word that it stored a file for one of our assets."""

    event_id: str
    action: str
    asset_id: str
    handle: str
    url: str
    storage_key: str | None
    size: int | None
    mime_type: str | None
    #: Which of the asset's stores made the file (our ``cms_sync_store`` tag), if told.
    store_number: int | None
    document_id: str | None
    #: When Filestack says the event happened (unix s), if it says.
    timestamp: float | None

    @property
    def delivery_id(self) -> str:
        return delivery_id(self.event_id)


@dataclass(frozen=True)
class NotOurs:
    """A notification to acknowledge and otherwise leave alone."""

    event_id: str | None
    reason: str


def delivery_id(event_id: str) -> str:
    return f"{DELIVERY_PREFIX}{event_id}"


class MalformedNotice(ValueError):
    """The body is not a Filestack notification."""


def parse(body: bytes, *, dataset: str) -> StoreNotice | NotOurs:
    """What a verified notification says about our stores.

    Args:
        dataset: ``<project>/<dataset>`` of this worker: stores tagged for another are
            not ours.

    Raises:
        MalformedNotice: not JSON, or without an ``id`` and ``action``.
    """
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedNotice("body is not JSON") from exc
    if not isinstance(message, dict):
        raise MalformedNotice("body is not a JSON object")
    event_id, action = message.get("id"), message.get("action")
    if not isinstance(event_id, (int, str)) or isinstance(event_id, bool) or not str(event_id):
        raise MalformedNotice("notification has no id")
    if not isinstance(action, str):
        raise MalformedNotice("notification has no action")
    event = str(event_id)[:128]
    if action not in STORE_ACTIONS:
        return NotOurs(event, f"action {action[:64]!r} is not a store")
    text = message.get("text")
    if not isinstance(text, dict):
        raise MalformedNotice(f"{action} has no text object")
    tags = _tags(message, text)
    asset_id = tags.get(TAG_ASSET)
    if not asset_id:
        return NotOurs(event, "no sanity_asset_id upload tag: not a cms-sync store")
    if tags.get(TAG_DATASET, dataset) != dataset:
        return NotOurs(event, f"a store for another dataset ({tags[TAG_DATASET][:128]})")
    stored = _stored_file(action, text)
    if stored is None:
        raise MalformedNotice(f"{action} names no stored file")
    handle, url, key, size, mime = stored
    number = tags.get(TAG_STORE, "")
    timestamp = message.get("timestamp")
    return StoreNotice(
        event_id=event,
        action=action,
        asset_id=asset_id,
        handle=handle,
        url=url,
        storage_key=key,
        size=size,
        mime_type=mime,
        store_number=int(number) if number.isdigit() and len(number) < 10 else None,
        document_id=tags.get(TAG_DOCUMENT) or None,
        timestamp=float(timestamp) if isinstance(timestamp, (int, float)) else None,
    )


def _tags(message: dict[str, Any], text: dict[str, Any]) -> dict[str, str]:
    for where in (text, message):
        tags = where.get("upload_tags")
        if isinstance(tags, dict):
            return {str(k): v for k, v in tags.items() if isinstance(v, str)}
    return {}


def _stored_file(
    action: str, text: dict[str, Any]
) -> tuple[str, str, str | None, int | None, str | None] | None:
    """``(handle, url, key, size, mime)`` of the stored file, or None."""
    if action == "fp.converse":
        link = text.get("link")
        if not isinstance(link, dict):
            return None
        text = {**link, "key": link.get("path"), "type": link.get("mimetype")}
    url = text.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return None
    handle = text.get("handle")
    if not isinstance(handle, str):  # fp.upload names it only in the URL
        handle = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    if not _HANDLE.match(handle):
        return None
    key, size, mime = text.get("key"), text.get("size"), text.get("type")
    return (
        handle,
        url,
        key if isinstance(key, str) else None,
        size if isinstance(size, int) and not isinstance(size, bool) else None,
        mime if isinstance(mime, str) else None,
    )
