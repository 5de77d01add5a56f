"""The core sync: fetch a document's media, store what is missing, patch it back.

``Syncer.sync(document_id)`` is safe to run any number of times: stores go through the
stored-asset records (each distinct asset is stored once; concurrent requests for the
same asset share one store), the patch is guarded by ``ifRevisionID``, and a document
already in sync gets no mutation at all. Concurrent syncs share their reads and writes
(:mod:`cms_sync.lake`): many documents to a query, many patches to a transaction.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import structlog

from cms_sync import filestack, sanity
from cms_sync import filestack_notices as notices
from cms_sync.allowlist import AllowedHost
from cms_sync.backoff import Backoff
from cms_sync.document import Asset, parse_document
from cms_sync.errors import (
    AmbiguousStore,
    CmsSyncError,
    DocumentNotFound,
    RevisionConflict,
    SlotBlocked,
    StaleRead,
    StoreDeferred,
    StoreGaveUp,
    UnmappedType,
)
from cms_sync.events import (
    AssetStored,
    Events,
    LogEvents,
    PatchConflict,
    StoreUnanswered,
    SyncEnded,
)
from cms_sync.filestack import FilestackClient
from cms_sync.lake import MAX_BATCH, Lake
from cms_sync.mapping import MediaMapping
from cms_sync.mutations import build_patch
from cms_sync.planner import Action, Plan, plan_document
from cms_sync.ratelimit import Limit, RateLimiter
from cms_sync.records import AssetRecords, StoredAsset, StoreGate
from cms_sync.retry import RetryPolicy, request_backoff, store_may_have_happened
from cms_sync.sanity import SanityClient
from cms_sync.scrub import Scrubber
from cms_sync.settings import RequestSettings, SanitySettings, SyncSettings
from cms_sync.timestamps import parse_timestamp

#: How long past a store's deadline the ledger holds the asset for it.
_HOLD_SLACK = 5.0


@dataclass(frozen=True)
class SlotFailure:
    slot: str
    error: CmsSyncError


@dataclass
class SyncReport:
    """What one sync of one document did."""

    document_id: str
    plan: Plan | None = None
    stored: int = 0  # slots filled by a store made during this sync (one per asset)
    reused: int = 0  # slots filled from an earlier store of the same asset
    skipped: int = 0  # slots with no asset, or already in sync
    patched: bool = False
    replans: int = 0
    failures: list[SlotFailure] = field(default_factory=list)
    error: CmsSyncError | None = None  # the document could not be synced at all

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures


@dataclass(frozen=True)
class _Resolution:
    """How the assets of one plan were obtained."""

    records: dict[str, StoredAsset]
    errors: dict[str, CmsSyncError]


class Syncer:
    """Runs the core sync for documents; one instance per process (it owns the dedupe)."""

    def __init__(
        self,
        *,
        sanity: SanityClient,
        filestack: FilestackClient,
        mapping: MediaMapping,
        allowed_hosts: tuple[AllowedHost, ...],
        records: AssetRecords,
        store_concurrency: int = 4,
        max_replans: int = 3,
        ambiguity: Backoff | None = None,
        batch_size: int = MAX_BATCH,
        clock: Callable[[], float] = time.time,
        events: Events | None = None,
        dataset_tag: str | None = None,
    ) -> None:
        """
        Args:
            events: told of each store, unanswered store, conflict and sync (the log
                when None).
            batch_size: the most documents read in one query, or patched in one
                transaction (1: each alone).
            ambiguity: the per-asset backoff after a store whose answer was lost, and
                (``max_attempts``) how many such stores of one asset before giving up.
        """
        self._lake = Lake(sanity, mapping, max_batch=batch_size)
        self._filestack = filestack
        self._mapping = mapping
        self._allowed_hosts = allowed_hosts
        self._records = records
        self._store_slots = asyncio.Semaphore(store_concurrency)
        self._max_replans = max_replans
        self._inflight: dict[str, asyncio.Future[StoredAsset]] = {}
        self._ambiguity = ambiguity or Backoff(base=30.0, max_attempts=3)
        self._clock = clock
        self._events = events or LogEvents()
        self._dataset_tag = dataset_tag

    async def plan(self, document_id: str, *, not_before: float | None = None) -> Plan:
        """Fetch the published document and plan every media slot.

        Args:
            not_before: the delivery's transaction time (unix seconds); a document last
                updated before it is a stale read.

        Raises:
            DocumentNotFound, UnmappedType, StaleRead, TransportError, RemoteError.
        """
        result = await self._lake.fetch(document_id)
        if result is None:
            raise DocumentNotFound(document_id)
        doc_type = result.get("_type")
        if doc_type not in self._mapping.types:
            raise UnmappedType(document_id, str(doc_type), self._mapping.type_names)
        document = parse_document(result, self._mapping)
        if not_before is not None:
            updated = parse_timestamp(document.updated_at)
            # _updatedAt may have whole-second precision; the transaction time has ms.
            if updated is None or updated < math.floor(not_before):
                raise StaleRead(document_id, document.updated_at, not_before)
        return plan_document(document, self._allowed_hosts)

    async def sync(
        self, document_id: str, *, dry_run: bool = False, not_before: float | None = None
    ) -> SyncReport:
        """Bring every media slot of the document into Filestack and patch it back.

        Errors of cms-sync's own hierarchy end up in the report; anything else is a bug
        and propagates.
        """
        report = SyncReport(document_id=document_id)
        with structlog.contextvars.bound_contextvars(document_id=document_id):
            try:
                await self._sync(report, dry_run=dry_run, not_before=not_before)
            except CmsSyncError as exc:
                report.error = exc
            if not dry_run or report.error is not None:
                self._events.emit(_ended(report))
        return report

    async def _sync(self, report: SyncReport, *, dry_run: bool, not_before: float | None) -> None:
        made_here: set[str] = set()
        for attempt in range(self._max_replans + 1):
            plan = await self.plan(report.document_id, not_before=not_before)
            report.plan, report.replans = plan, attempt
            if dry_run:
                _tally(report, plan, _Resolution({}, {}), made_here)
                return
            resolution = await self._resolve(plan, made_here)
            _tally(report, plan, resolution, made_here)
            mutation = build_patch(plan, resolution.records)
            if mutation is None:
                return
            try:
                await self._lake.patch(mutation)
            except RevisionConflict:
                self._events.emit(PatchConflict(report.document_id, plan.document.rev, attempt + 1))
                if attempt == self._max_replans:
                    raise
                continue
            report.patched = True
            return

    async def _resolve(self, plan: Plan, made_here: set[str]) -> _Resolution:
        """Obtain a stored copy of every asset the plan needs (concurrently)."""
        assets = list(plan.assets_to_store().values())
        outcomes = await asyncio.gather(
            *(self._obtain(asset, plan.document.id, made_here) for asset in assets),
            return_exceptions=True,
        )
        records: dict[str, StoredAsset] = {}
        errors: dict[str, CmsSyncError] = {}
        for asset, outcome in zip(assets, outcomes, strict=True):
            if isinstance(outcome, StoredAsset):
                records[asset.id] = outcome
            elif isinstance(outcome, CmsSyncError):
                errors[asset.id] = outcome
            else:
                raise outcome  # a bug, not a sync failure
        return _Resolution(records, errors)

    async def _obtain(self, asset: Asset, document_id: str, made_here: set[str]) -> StoredAsset:
        record = await self._records.get(asset.id)
        if record is not None:
            return record
        future = self._inflight.get(asset.id)
        if future is None:
            future = asyncio.ensure_future(self._store(asset, document_id))
            self._inflight[asset.id] = future
            future.add_done_callback(lambda _: self._inflight.pop(asset.id, None))
            made_here.add(asset.id)
        # Shielded: one waiter being cancelled must not cancel a store others await.
        return await asyncio.shield(future)

    async def _store(self, asset: Asset, document_id: str) -> StoredAsset:
        """Store one asset at its storage key, through the ledger of unanswered stores."""
        assert asset.url is not None  # the planner only plans stores for assets with a URL
        key = self._filestack.storage_key(asset.id, asset.extension)
        async with self._store_slots:  # the ledger's hold starts only once a slot is ours
            now = self._clock()
            gate = await self._records.begin_store(
                asset.id,
                document_id=document_id,
                storage_key=key,
                now=now,
                hold_until=now + self._filestack.deadline + _HOLD_SLACK,
                max_attempts=self._ambiguity.max_attempts,
            )
            if gate.record is not None:
                return gate.record
            if not gate.granted:
                raise self._refusal(asset.id, gate)
            try:
                stored = await self._filestack.store_url(
                    asset.url,
                    filename=_filename(asset),
                    tags=self._tags(asset.id, document_id, gate.number),
                    key=key,
                )
            except CmsSyncError as exc:
                unanswered = await self._settle(asset.id, gate, exc)
                if unanswered is None:
                    raise
                # Filestack's notification of this store may have beaten its lost answer.
                notified = await self._records.get(asset.id)
                if notified is not None:
                    return notified
                raise unanswered from exc
        record = StoredAsset(
            asset_id=asset.id,
            handle=stored.handle,
            url=stored.url,
            size=stored.size if stored.size is not None else asset.size,
            mime_type=stored.mime_type or asset.mime_type,
        )
        kept = await self._records.put(record)  # the first record of the asset stays
        self._events.emit(AssetStored(asset.id, record.handle, record.size))
        return kept

    def _tags(self, asset_id: str, document_id: str, number: int) -> dict[str, str]:
        """Upload tags, which Filestack's notification of the store carries back."""
        tags = {
            notices.TAG_DOCUMENT: document_id[: filestack.MAX_TAG_VALUE],
            notices.TAG_ASSET: asset_id[: filestack.MAX_TAG_VALUE],
            notices.TAG_STORE: str(number),
        }
        if self._dataset_tag is not None:
            tags[notices.TAG_DATASET] = self._dataset_tag[: filestack.MAX_TAG_VALUE]
        return tags

    def _refusal(self, asset_id: str, gate: StoreGate) -> CmsSyncError:
        if gate.attempts >= self._ambiguity.max_attempts:
            return StoreGaveUp(
                asset_id,
                attempts=gate.attempts,
                storage_key=gate.storage_key,
                last_error=gate.last_error,
            )
        return StoreDeferred(asset_id, attempts=gate.attempts, retry_at=gate.not_before)

    async def _settle(
        self, asset_id: str, gate: StoreGate, exc: CmsSyncError
    ) -> CmsSyncError | None:
        """Settle a store that raised: not counted when nothing was stored (None: ``exc``
        stands), else backed off and reported as unanswered."""
        now = self._clock()
        maybe_stored = store_may_have_happened(exc)
        retry_at = now + self._ambiguity.delay(gate.attempts)
        await self._records.end_store(
            asset_id, maybe_stored=maybe_stored, now=now, retry_at=retry_at, error=str(exc)
        )
        if not maybe_stored:
            return None
        self._events.emit(StoreUnanswered(asset_id, gate.attempts, str(exc)))
        if gate.attempts >= self._ambiguity.max_attempts:
            return StoreGaveUp(
                asset_id, attempts=gate.attempts, storage_key=gate.storage_key, last_error=str(exc)
            )
        return AmbiguousStore(asset_id, exc, attempts=gate.attempts, retry_at=retry_at)


def retry_policy(settings: RequestSettings) -> RetryPolicy:
    return RetryPolicy(
        request_backoff(
            attempts=settings.cms_sync_retry_attempts, initial=settings.cms_sync_retry_backoff
        )
    )


def rate_limiter(settings: SanitySettings) -> RateLimiter:
    """The process's one limiter, for both clients (Filestack's rate when it is set)."""
    rates = {
        Limit.SANITY_MUTATE: settings.cms_sync_sanity_mutate_rate,
        Limit.SANITY_CALL: settings.cms_sync_sanity_call_rate,
    }
    store_rate = getattr(settings, "cms_sync_filestack_store_rate", None)
    if store_rate is not None:
        rates[Limit.FILESTACK_STORE] = store_rate
    return RateLimiter(rates)


@asynccontextmanager
async def open_syncer(
    settings: SyncSettings,
    mapping: MediaMapping,
    records: AssetRecords,
    *,
    retry: RetryPolicy | None = None,
    limiter: RateLimiter | None = None,
    sanity_transport: httpx.AsyncBaseTransport | None = None,
    filestack_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
    events: Events | None = None,
) -> AsyncIterator[Syncer]:
    """A :class:`Syncer` with its two HTTP clients, closed on exit (transports for tests).

    ``events`` hears the syncer and both clients (the log when None).
    """
    retry = retry or retry_policy(settings)
    limiter = limiter or rate_limiter(settings)
    async with (
        sanity.http_client(settings, transport=sanity_transport) as sanity_http,
        filestack.http_client(
            settings,
            transport=filestack_transport,
            connections=max(20, settings.cms_sync_store_concurrency),
        ) as filestack_http,
    ):
        yield Syncer(
            sanity=sanity.SanityClient(
                sanity_http,
                dataset=settings.sanity_dataset,
                retry=retry,
                scrub=Scrubber(settings.secret_values()),
                limiter=limiter,
                events=events,
            ),
            filestack=filestack.FilestackClient.from_settings(
                filestack_http, settings, retry=retry, limiter=limiter, events=events
            ),
            mapping=mapping,
            allowed_hosts=settings.asset_allow_list,
            records=records,
            store_concurrency=settings.cms_sync_store_concurrency,
            max_replans=settings.cms_sync_max_replans,
            batch_size=settings.cms_sync_batch_size,
            ambiguity=Backoff(
                base=settings.cms_sync_ambiguous_store_backoff,
                max_attempts=settings.cms_sync_ambiguous_store_max,
            ),
            clock=clock,
            events=events,
            dataset_tag=settings.dataset_tag,
        )


def _ended(report: SyncReport) -> SyncEnded:
    error = report.error
    return SyncEnded(
        report.document_id,
        rev=report.plan.document.rev if report.plan is not None else None,
        patched=report.patched,
        stored=report.stored,
        reused=report.reused,
        failed_slots=len(report.failures),
        error=None if error is None else str(error),
        error_type=None if error is None else type(error).__name__,
    )


def _filename(asset: Asset) -> str | None:
    if asset.original_filename:
        return asset.original_filename
    if asset.extension:
        return f"{asset.id}.{asset.extension}"
    return None


def _tally(report: SyncReport, plan: Plan, resolution: _Resolution, made_here: set[str]) -> None:
    """Count the final plan's slots into the report (recomputed after each replan)."""
    report.stored = report.reused = report.skipped = 0
    report.failures = []
    counted_stores: set[str] = set()
    for slot_plan in plan.slots:
        path = slot_plan.slot.path
        if slot_plan.action in (Action.EMPTY, Action.IN_SYNC):
            report.skipped += 1
        elif slot_plan.action is Action.BLOCKED:
            report.failures.append(SlotFailure(path, SlotBlocked(path, slot_plan.reason)))
        elif slot_plan.asset.id in resolution.errors:
            report.failures.append(SlotFailure(path, resolution.errors[slot_plan.asset.id]))
        elif slot_plan.asset.id in resolution.records:
            asset_id = slot_plan.asset.id
            if asset_id in made_here and asset_id not in counted_stores:
                counted_stores.add(asset_id)
                report.stored += 1
            else:
                report.reused += 1
