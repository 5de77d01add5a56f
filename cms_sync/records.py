"""Stored-asset records: which Filestack file was made from which Sanity asset.

A record is written right after a store succeeds and before the patch, so a retried
sync, another document using the same asset, or an editor re-publishing an old draft
re-patch from the record instead of storing the file again. This module holds the
interface and the in-memory implementation (one process, one run); the job store adds
a durable one behind the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredAsset:
    asset_id: str
    handle: str
    url: str
    size: int | None
    mime_type: str | None


class AssetRecords(Protocol):
    async def get(self, asset_id: str) -> StoredAsset | None: ...

    async def put(self, record: StoredAsset) -> None: ...


class MemoryAssetRecords:
    """Records kept for the life of the process."""

    def __init__(self) -> None:
        self._records: dict[str, StoredAsset] = {}

    async def get(self, asset_id: str) -> StoredAsset | None:
        return self._records.get(asset_id)

    async def put(self, record: StoredAsset) -> None:
        self._records[record.asset_id] = record
