"""The Content Lake as the syncer uses it: read a document, write its patch, in batches.

Each job reads one document and writes one patch. Under load many jobs do so at nearly
the same moment, and one request apiece would spend Sanity's limits (25 mutate requests
a second) on what one request can carry. Here concurrent reads become one query
(``*[_id in $ids]``) and concurrent patches one transaction, each patch still guarded by
its own ``ifRevisionID``. :mod:`cms_sync.batching` decides what goes together, by load
alone: a lone job's read or write leaves at once.

A transaction is all-or-nothing. When one patch's revision no longer matches, Sanity
rejects the whole request with a 409 that names the mutation (``items[].index``): that
document gets the conflict (its sync replans, as it would alone) and the others are
sent again without it. A 409 that names none sends each patch alone. So a conflict costs
the other documents a request, never a wrong write: every patch applies only to the
revision it was planned from, or not at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from cms_sync.batching import Batcher
from cms_sync.errors import CmsSyncError, InvalidResponse, RevisionConflict
from cms_sync.mapping import MediaMapping
from cms_sync.queries import build_document_query
from cms_sync.sanity import SERVICE, SanityClient

#: The most documents one query or one transaction carries.
MAX_BATCH = 50
#: The most JSON bytes of patches in one transaction (Sanity takes up to 4 MB).
MAX_BATCH_BYTES = 1_000_000


class Lake:
    def __init__(
        self,
        sanity: SanityClient,
        mapping: MediaMapping,
        *,
        max_batch: int = MAX_BATCH,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        read_senders: int = 4,
        write_senders: int = 2,
    ) -> None:
        """
        Args:
            max_batch: the most documents per request; 1 sends each alone.
            read_senders, write_senders: requests of each kind in flight at once.
        """
        self._sanity = sanity
        self._query = build_document_query(mapping)
        self.reads: Batcher[str, dict[str, Any] | None] = Batcher(
            self._read, max_size=max_batch, senders=read_senders
        )
        self.writes: Batcher[dict[str, Any], None] = Batcher(
            self._write,
            max_size=max_batch,
            senders=write_senders,
            max_weight=max_batch_bytes,
            weight=lambda mutation: len(json.dumps(mutation)),
            ready=sanity.mutation_ready,
        )

    async def fetch(self, document_id: str) -> dict[str, Any] | None:
        """The published document's media fields, or None when there is no such document.

        Raises:
            TransportError, RemoteError.
        """
        return await self.reads.submit(document_id)

    async def patch(self, mutation: dict[str, Any]) -> None:
        """Apply one document's guarded patch.

        Raises:
            RevisionConflict: this document changed since it was read; nothing applied.
            TransportError, RemoteError.
        """
        await self.writes.submit(mutation)

    async def _read(self, document_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        result = await self._sanity.query(
            self._query.text, self._query.params(sorted(set(document_ids)))
        )
        if not isinstance(result, list):
            raise InvalidResponse(SERVICE, 200, "query result is not a list of documents")
        found: dict[str, dict[str, Any]] = {}
        for document in result:
            if not isinstance(document, dict) or not isinstance(document.get("_id"), str):
                raise InvalidResponse(SERVICE, 200, "query result holds a document without _id")
            found[document["_id"]] = document
        return [found.get(document_id) for document_id in document_ids]

    async def _write(self, mutations: Sequence[dict[str, Any]]) -> list[Exception | None]:
        answers: list[Exception | None] = [None] * len(mutations)
        remaining = list(range(len(mutations)))
        while remaining:
            try:
                await self._sanity.mutate([mutations[i] for i in remaining])
                return answers
            except RevisionConflict as exc:
                index = exc.index
                if len(remaining) == 1:
                    answers[remaining[0]] = exc
                    return answers
                if index is None or not 0 <= index < len(remaining):
                    alone = await asyncio.gather(*(self._alone(mutations[i]) for i in remaining))
                    for i, answer in zip(remaining, alone, strict=True):
                        answers[i] = answer
                    return answers
                answers[remaining.pop(index)] = exc
        return answers

    async def _alone(self, mutation: dict[str, Any]) -> CmsSyncError | None:
        try:
            await self._sanity.mutate([mutation])
        except CmsSyncError as exc:
            return exc
        return None
