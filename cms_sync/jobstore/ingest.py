"""Deliveries written together: what both stores' batched ``accept`` share. Pure.

Deliveries that arrive while a write is in flight go in the next write, as one batch.
The outcome of each must be what writing them one after another would have given:

- a key seen before, or earlier in the same batch, makes its delivery a duplicate, and
  none of its requests is written;
- the first delivery in the batch to name a document that had no pending job queued it;
  every later one coalesced into it (and so did the first, if the job was pending);
- the requests for one document fold as the store folds them one after another
  (:func:`merge`).
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from cms_sync.jobs import Accepted, JobRequest


@dataclass(frozen=True)
class Delivery:
    key: str | None
    requests: list[JobRequest]  # one per document (merged)
    now: float


def merge(requests: Sequence[JobRequest]) -> list[JobRequest]:
    """One request per document, in first-seen order, folded as the store would fold
    them one after another (newest operation, latest ``not_before``, last source)."""
    merged: dict[str, JobRequest] = {}
    for r in requests:
        prior = merged.get(r.document_id)
        if prior is None:
            merged[r.document_id] = r
            continue
        times = [t for t in (prior.not_before, r.not_before) if t is not None]
        merged[r.document_id] = JobRequest(
            r.document_id,
            r.operation or prior.operation,
            max(times) if times else None,
            r.source,
        )
    return list(merged.values())


def first_of_each_key(batch: Sequence[Delivery]) -> list[Delivery | None]:
    """The batch, with None for a delivery whose key came earlier in it (a duplicate)."""
    live: list[Delivery | None] = []
    seen: set[str] = set()
    for delivery in batch:
        if delivery.key is not None and delivery.key in seen:
            live.append(None)
            continue
        if delivery.key is not None:
            seen.add(delivery.key)
        live.append(delivery)
    return live


def outcomes(
    live: Sequence[Delivery | None], fresh: Container[str], new: Mapping[str, bool]
) -> list[Accepted]:
    """Each delivery's outcome, in order.

    Args:
        live: from :func:`first_of_each_key`.
        fresh: the keys this batch wrote (those not seen before it).
        new: for each document the batch wrote, whether it had no pending job before.
    """
    unclaimed = {doc for doc, created in new.items() if created}
    results = []
    for written in live:
        if written is None or (written.key is not None and written.key not in fresh):
            results.append(Accepted(duplicate=True))
            continue
        docs = [r.document_id for r in written.requests]
        queued = tuple(doc for doc in docs if doc in unclaimed)
        unclaimed.difference_update(queued)
        coalesced = tuple(doc for doc in docs if doc not in queued)
        results.append(Accepted(queued=queued, coalesced=coalesced))
    return results
