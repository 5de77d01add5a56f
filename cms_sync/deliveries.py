"""Read a Sanity webhook delivery into the job requests to queue. Pure.

Two body shapes are accepted:

- GROQ-powered webhooks: the projection evaluated on the document (``{_id, _type, _rev}``
  recommended, or the whole document); the id may also come from ``sanity-document-id``
  and the operation from ``sanity-operation``.
- The legacy transaction body of the seed integration guide:
  ``{"ids": {"created": [...], "updated": [...], "deleted": [...], "all": [...]}}``.

Drafts, versions, deletes, types the mapping does not list and ids that are not Sanity
document ids are acknowledged and not queued; each such id comes back with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cms_sync.errors import DeliveryTooLarge, MalformedDelivery
from cms_sync.jobs import JobRequest, JobSource
from cms_sync.mapping import MediaMapping
from cms_sync.timestamps import parse_timestamp

#: Sanity document ids: a-zA-Z0-9._- (Sanity's "IDs and Paths"), at most 128 characters.
MAX_ID_LENGTH = 128
_ID = re.compile(r"^[A-Za-z0-9._-]+$")
#: How much of an unusable id is shown back in a reason or a log line.
_SHOWN = 64
#: Default cap on the documents one delivery may name.
MAX_DOCUMENTS = 1000


@dataclass(frozen=True)
class Delivery:
    idempotency_key: str | None
    requests: tuple[JobRequest, ...]  # one per document to queue
    ignored: tuple[tuple[str, str], ...]  # (document id, why it is not queued)


def shown_id(document_id: str) -> str:
    """An id cut short for messages: a hostile 900k-character id must not fill a log."""
    if len(document_id) <= _SHOWN:
        return document_id
    return f"{document_id[:_SHOWN]}… ({len(document_id)} characters)"


def id_problem(document_id: str) -> str | None:
    """Why ``document_id`` is not a Sanity document id, or None when it is one."""
    if not document_id:
        return "empty document id"
    if len(document_id) > MAX_ID_LENGTH:
        return f"not a Sanity document id: longer than {MAX_ID_LENGTH} characters"
    if not _ID.match(document_id):
        return "not a Sanity document id: only letters, digits, '.', '_' and '-' are allowed"
    if document_id[0] == "-" or ".-" in document_id:
        return "not a Sanity document id: a path segment starts with '-'"
    return None


def _skip_reason(
    document_id: str, doc_type: str | None, operation: str | None, mapping: MediaMapping
) -> str | None:
    """Why a Sanity document id (see :func:`id_problem`) is not queued, or None."""
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


def parse_delivery(
    body: bytes,
    headers: Mapping[str, str],
    mapping: MediaMapping,
    *,
    max_documents: int = MAX_DOCUMENTS,
) -> Delivery:
    """The events a delivery asks for, and the ids it names that are not queued.

    Raises:
        MalformedDelivery: not a JSON object (or nested too deep to read), no document id
            anywhere, or none that is a Sanity document id.
        DeliveryTooLarge: more than ``max_documents`` distinct ids.
    """
    data = _load(body)
    header_op = (headers.get("sanity-operation") or "").strip().lower() or None
    when = parse_timestamp(headers.get("sanity-transaction-time"))
    key = (headers.get("idempotency-key") or "").strip() or None
    if "ids" in data and "_id" not in data:
        candidates = [(doc_id, None, op) for doc_id, op in _legacy_ids(data["ids"])]
        return _many(candidates, when, key, mapping, max_documents)
    # A GROQ-powered webhook (every delivery Sanity sends today): one document.
    doc_id = data.get("_id") or headers.get("sanity-document-id")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise MalformedDelivery("no document id in the body or sanity-document-id")
    doc_id = doc_id.strip()
    problem = id_problem(doc_id)
    if problem is not None:
        raise MalformedDelivery(f"{shown_id(doc_id)!r}: {problem}")
    doc_type = data.get("_type")
    reason = _skip_reason(
        doc_id, doc_type if isinstance(doc_type, str) else None, header_op, mapping
    )
    if reason is not None:
        return Delivery(key, (), ((shown_id(doc_id), reason),))
    return Delivery(key, (JobRequest(doc_id, header_op, when, JobSource.WEBHOOK),), ())


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedDelivery("body is not JSON") from None
    except RecursionError:
        raise MalformedDelivery("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise MalformedDelivery("body is not a JSON object")
    return data


def _many(
    candidates: Sequence[tuple[str, str | None, str | None]],
    when: float | None,
    key: str | None,
    mapping: MediaMapping,
    max_documents: int,
) -> Delivery:
    """A legacy delivery's ids: each queued once, or ignored with its reason."""
    if not candidates:
        raise MalformedDelivery("no document id in 'ids'")
    distinct = len({doc_id for doc_id, _, _ in candidates})
    if distinct > max_documents:
        raise DeliveryTooLarge(f"{distinct} documents in one delivery; at most {max_documents}")
    problems = [id_problem(doc_id) for doc_id, _, _ in candidates]
    if all(problem is not None for problem in problems):
        raise MalformedDelivery(f"{shown_id(candidates[0][0])!r}: {problems[0]}")

    requests: dict[str, JobRequest] = {}
    ignored: list[tuple[str, str]] = []
    for (doc_id, doc_type, operation), problem in zip(candidates, problems, strict=True):
        reason = problem or _skip_reason(doc_id, doc_type, operation, mapping)
        if reason is not None:
            ignored.append((shown_id(doc_id), reason))
        elif doc_id not in requests:
            requests[doc_id] = JobRequest(doc_id, operation, when, JobSource.WEBHOOK)
    return Delivery(idempotency_key=key, requests=tuple(requests.values()), ignored=tuple(ignored))
