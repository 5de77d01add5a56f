"""Stored-asset records, and the ledger of stores whose answer never came.

A record (Sanity asset id -> Filestack handle) is written right after a store succeeds
and before the patch, so a retried sync, another document using the same asset, or an
editor re-publishing an old draft re-patch from the record instead of storing again.

A store is not idempotent, and its answer can be lost (a 502 from a gateway, a timeout,
a 2xx without a handle) after Filestack stored the file. So before each store the asset
is entered in the ledger: ``begin_store`` counts the attempt and holds the asset for the
time the request may take, atomically, so that no other worker or process stores it
meanwhile. A definite answer settles the entry (``put`` on success; ``end_store`` with
``maybe_stored=False`` when the request was never sent or was refused); an ambiguous one
leaves it counted, with a per-asset backoff (``maybe_stored=True``). A crash mid-store
leaves it counted too, held until the hold runs out. Past a cap, stores of the asset stop
until an operator replays a document that uses it.

Each granted store has a number (``StoreGate.number``: the asset's stores so far, this one
included), sent as an upload tag, so that Filestack's notification of a file tells which
store made it. The first handle recorded for an asset is kept; a later one (a store whose
answer was lost, then notified after the asset was stored again) is an *orphan*: a handle
no document uses (see :class:`Orphan`).

This module holds the interface and the in-memory implementation (one process, one run);
the job store adds a durable one behind the same Protocol.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields
from typing import Protocol

from cms_sync.filestack_notices import StoreNotice


@dataclass(frozen=True)
class StoredAsset:
    asset_id: str
    handle: str
    url: str
    size: int | None
    mime_type: str | None


@dataclass(frozen=True)
class StoreGate:
    """The ledger's answer to "may this asset be stored now?"."""

    #: The asset was stored meanwhile (by another worker or process): use this.
    record: StoredAsset | None = None
    granted: bool = False
    #: Unanswered (or unfinished) stores of the asset, counting this one when granted.
    attempts: int = 0
    #: When refused: when another store may be tried.
    not_before: float = 0.0
    storage_key: str | None = None
    last_error: str | None = None
    #: When granted: this store's number among the asset's stores (1 for the first).
    number: int = 0


@dataclass(frozen=True)
class Orphan:
    """A handle Filestack made for one of our assets that no document uses.

    With the deterministic storage key it names the same stored object as the kept handle:
    deleting it through Filestack's API would delete the kept file too.
    """

    handle: str
    asset_id: str
    storage_key: str | None
    url: str
    #: Which of the asset's stores made it, when known.
    store_number: int | None
    #: Why there is a second handle: an ambiguous answer, or a crash mid-store.
    reason: str
    noticed_at: float


@dataclass(frozen=True)
class UnseenCopies:
    """Stores of an asset that may have made a file whose handle we never learnt."""

    asset_id: str
    storage_key: str | None
    possible: int
    last_error: str | None


#: Why a store's own answer can name an orphan.
ANSWERED_LATE = (
    "a store answered after the asset was recorded from the notification of an earlier store"
)


def notified_reason(logged: bool, error: str | None) -> str:
    """Why a handle that Filestack notified, for an asset recorded under another, exists.

    Args:
        logged: the store that made it is in our log of granted stores.
        error: the answer that left that store ambiguous (None: it never got one).
    """
    if not logged:
        return "a store this database has no trace of (another worker's, or an older one)"
    if error is not None:
        return f"an ambiguous answer: {error}"
    return "no answer recorded: the worker stopped or crashed mid-store"


#: The columns of the ``orphans`` table, in :class:`Orphan`'s order (every backend).
ORPHAN_COLUMNS = tuple(f.name for f in fields(Orphan))


def orphan(record: StoredAsset | StoreNotice, reason: str, *, now: float) -> tuple[object, ...]:
    """The ``orphans`` row, in :data:`ORPHAN_COLUMNS` order, for a second handle of an asset:
    a store answered after a notice was recorded, or a notice of a store we did not keep."""
    notice = record if isinstance(record, StoreNotice) else None
    return astuple(
        Orphan(
            handle=record.handle,
            asset_id=record.asset_id,
            storage_key=notice.storage_key if notice else None,
            url=record.url,
            store_number=notice.store_number if notice else None,
            reason=reason,
            noticed_at=now,
        )
    )


def notice_record(notice: StoreNotice) -> StoredAsset:
    """The record a notification of a store makes."""
    return StoredAsset(notice.asset_id, notice.handle, notice.url, notice.size, notice.mime_type)


class AssetRecords(Protocol):
    async def get(self, asset_id: str) -> StoredAsset | None: ...

    async def put(self, record: StoredAsset) -> StoredAsset:
        """Record a stored asset and settle its ledger entry; return the record kept.

        The first record of an asset stays: when another is there already (written from a
        notification while this store was in flight), this one's handle is an orphan.
        """
        ...

    async def begin_store(
        self,
        asset_id: str,
        *,
        document_id: str,
        storage_key: str | None,
        now: float,
        hold_until: float,
        max_attempts: int,
    ) -> StoreGate:
        """Grant a store of ``asset_id`` (counting it, held until ``hold_until``) or refuse.

        Refused while an earlier store is held or backing off (``not_before`` in the
        future), and once ``max_attempts`` unanswered stores are counted.
        """
        ...

    async def end_store(
        self, asset_id: str, *, maybe_stored: bool, now: float, retry_at: float, error: str
    ) -> None:
        """Settle a granted store that got no handle.

        Args:
            maybe_stored: False when Filestack certainly stored nothing (the request was
                never sent, or was refused): the attempt is not counted. True when it may
                have: the attempt stays counted and the asset waits until ``retry_at``.
        """
        ...


@dataclass
class _Entry:
    attempts: int = 0
    total: int = 0
    not_before: float = 0.0
    storage_key: str | None = None
    last_error: str | None = None


@dataclass
class MemoryAssetRecords:
    """Records and ledger kept for the life of the process."""

    _records: dict[str, StoredAsset] = field(default_factory=dict)
    _ledger: dict[str, _Entry] = field(default_factory=dict)

    async def get(self, asset_id: str) -> StoredAsset | None:
        return self._records.get(asset_id)

    async def put(self, record: StoredAsset) -> StoredAsset:
        kept = self._records.setdefault(record.asset_id, record)
        self._ledger.pop(record.asset_id, None)
        return kept

    async def begin_store(
        self,
        asset_id: str,
        *,
        document_id: str,
        storage_key: str | None,
        now: float,
        hold_until: float,
        max_attempts: int,
    ) -> StoreGate:
        record = self._records.get(asset_id)
        if record is not None:
            return StoreGate(record=record)
        entry = self._ledger.setdefault(asset_id, _Entry())
        if entry.attempts >= max_attempts or entry.not_before > now:
            return StoreGate(
                attempts=entry.attempts,
                not_before=entry.not_before,
                storage_key=entry.storage_key,
                last_error=entry.last_error,
            )
        entry.attempts += 1
        entry.total += 1
        entry.not_before = hold_until
        entry.storage_key = storage_key
        return StoreGate(
            granted=True, attempts=entry.attempts, storage_key=storage_key, number=entry.total
        )

    async def end_store(
        self, asset_id: str, *, maybe_stored: bool, now: float, retry_at: float, error: str
    ) -> None:
        entry = self._ledger.setdefault(asset_id, _Entry())
        if not maybe_stored:
            entry.attempts = max(entry.attempts - 1, 0)
            entry.total = max(entry.total - 1, 0)
            entry.not_before = now
        else:
            entry.not_before = retry_at
            entry.last_error = error
