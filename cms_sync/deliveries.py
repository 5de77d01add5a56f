"""Read a Sanity webhook delivery into the document events to queue. Pure.

Two body shapes are accepted:

- GROQ-powered webhooks: the projection evaluated on the document (``{_id, _type, _rev}``
  recommended, or the whole document); the id may also come from ``sanity-document-id``
  and the operation from ``sanity-operation``.
- The legacy transaction body of the seed integration guide:
  ``{"ids": {"created": [...], "updated": [...], "deleted": [...], "all": [...]}}``.

Drafts, versions, deletes and types the mapping does not list are acknowledged and not
queued; each such id comes back with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cms_sync.errors import MalformedDelivery
from cms_sync.mapping import MediaMapping


@dataclass(frozen=True)
class DocumentEvent:
    """One document to sync because of a delivery."""

    document_id: str
    operation: str | None = None  # create | update (deletes are never queued)
    #: ``sanity-transaction-time`` as unix seconds: the document must be at least this new.
    transaction_time: float | None = None


@dataclass(frozen=True)
class Delivery:
    idempotency_key: str | None
    events: tuple[DocumentEvent, ...]
    ignored: tuple[tuple[str, str], ...]  # (document id, why it is not queued)


def parse_timestamp(value: str | None) -> float | None:
    """ISO-8601 (``2026-11-20T10:00:00.123Z``) to unix seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _skip_reason(
    document_id: str, doc_type: str | None, operation: str | None, mapping: MediaMapping
) -> str | None:
    if document_id.startswith("drafts."):
        return "draft: only published documents are synced"
    if document_id.startswith("versions."):
        return "release version: only published documents are synced"
    if operation == "delete":
        return "delete: nothing to sync"
    if doc_type is not None and doc_type not in mapping.types:
        return f"type {doc_type!r} is not in the media mapping"
    return None


def _legacy_ids(ids: Any) -> list[tuple[str, str]]:
    if not isinstance(ids, dict):
        raise MalformedDelivery("'ids' is not an object")
    found: list[tuple[str, str]] = []
    for key, operation in (("created", "create"), ("updated", "update"), ("deleted", "delete")):
        values = ids.get(key) or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise MalformedDelivery(f"'ids.{key}' is not a list of ids")
        found.extend((value, operation) for value in values)
    return found


def parse_delivery(body: bytes, headers: Mapping[str, str], mapping: MediaMapping) -> Delivery:
    """The events a delivery asks for, and the ids it names that are not queued.

    Raises:
        MalformedDelivery: not a JSON object, or no document id anywhere.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedDelivery("body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedDelivery("body is not a JSON object")
    header_op = (headers.get("sanity-operation") or "").strip().lower() or None
    when = parse_timestamp(headers.get("sanity-transaction-time"))

    candidates: list[tuple[str, str | None, str | None]]  # (id, type, operation)
    if "ids" in data and "_id" not in data:
        candidates = [(doc_id, None, op) for doc_id, op in _legacy_ids(data["ids"])]
    else:
        doc_id = data.get("_id") or headers.get("sanity-document-id")
        doc_type = data.get("_type")
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise MalformedDelivery("no document id in the body or sanity-document-id")
        candidates = [(doc_id.strip(), doc_type if isinstance(doc_type, str) else None, header_op)]
    if not candidates:
        raise MalformedDelivery("no document id in 'ids'")

    events: dict[str, DocumentEvent] = {}
    ignored: list[tuple[str, str]] = []
    for doc_id, doc_type, operation in candidates:
        reason = _skip_reason(doc_id, doc_type, operation, mapping)
        if reason is not None:
            ignored.append((doc_id, reason))
        elif doc_id not in events:
            events[doc_id] = DocumentEvent(doc_id, operation, when)
    key = (headers.get("idempotency-key") or "").strip() or None
    return Delivery(idempotency_key=key, events=tuple(events.values()), ignored=tuple(ignored))
