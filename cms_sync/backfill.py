"""Backfill: bring the documents that existed before the worker into the job store.

Webhooks cover what changes from now on; a backfill sweeps the rest. It reads the
published documents of the mapped types a page at a time, keyset-paginated on ``_id``
(``_id > $after | order(_id)``, never an offset, so a page costs the same at the end of
a large dataset as at its start), and queues a job (source ``backfill``) per document.
The service's workers, or a worker in this process (``--now``), run the jobs.

What makes it safe to kill at any point:

- a page's jobs and the cursor past it are written in one transaction, so a restarted
  sweep resumes after the last page it queued and queues nothing twice;
- the sweep queues at most ``backlog`` jobs ahead of the workers, so the queue (and
  this process) stay small however large the dataset, and webhook jobs never wait
  behind a whole dataset;
- the stored-asset records make a store that finished before a kill a reuse after it.

By default only documents with a media slot that still needs a store are swept (the
test mirrors the planner's: an asset, and no handle made from that asset); ``--all``
sweeps every document of the types, to re-check them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from cms_sync.errors import ConfigError, InvalidResponse
from cms_sync.events import Event, JobEnded
from cms_sync.groq import GroqSyntaxError, parse
from cms_sync.jobs import BackfillRun, FailedJob, JobRequest, JobSource, JobState, JobStore
from cms_sync.mapping import MediaField, MediaMapping
from cms_sync.media import HANDLE, SOURCE_ASSET, URL
from cms_sync.records import AssetRecords
from cms_sync.sanity import SanityClient

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Scope:
    """What a backfill sweeps: these mapped types; every document, or only those with a
    slot that still needs a store."""

    types: tuple[str, ...]
    everything: bool = False

    @property
    def name(self) -> str:
        """The run's name in the store: a rerun with the same scope resumes it."""
        return f"{'all' if self.everything else 'needed'}:{','.join(self.types)}"


def scope_for(mapping: MediaMapping, types: Sequence[str], *, everything: bool) -> Scope:
    """The scope of ``--type T... [--all]``: every mapped type when none is named.

    Raises:
        ConfigError: a named type is not in the media mapping.
    """
    unknown = [t for t in types if t not in mapping.types]
    if unknown:
        raise ConfigError(
            f"--type {', '.join(unknown)}: not in the media mapping "
            f"(mapped: {', '.join(mapping.type_names)})"
        )
    chosen = sorted(set(types)) if types else sorted(mapping.types)
    return Scope(tuple(chosen), everything)


def _needs_store(prefix: str) -> str:
    """GROQ: the slot at ``prefix`` has an asset and no handle made from that asset (the
    planner's test for "in sync", negated: same source asset, a handle and a URL)."""
    ref = f"{prefix}asset._ref"
    handle, url, source = (f"{prefix}{wire}" for wire in (HANDLE, URL, SOURCE_ASSET))
    in_sync = (
        f'{source} == {ref} && defined({handle}) && {handle} != "" && defined({url}) && {url} != ""'
    )
    return f"defined({ref}) && !({in_sync})"


def slot_needs_store(field: MediaField) -> str:
    if field.is_array:
        return f"count({field.name}[{_needs_store('')}]) > 0"
    return f"({_needs_store(field.name + '.')})"


def slot_assets_to_store(field: MediaField) -> str:
    """GROQ: the asset ids of the field's slots that need a store (a string, an array or
    null)."""
    if field.is_array:
        return f"{field.name}[{_needs_store('')}].asset._ref"
    return f"select({_needs_store(field.name + '.')} => {field.name}.asset._ref)"


@dataclass(frozen=True)
class SweepQueries:
    """The GROQ a backfill sends; type names go in as ``$types`` and ``$typeN``."""

    count: str
    page: str  # params: $types, $after
    plan: str  # a page with the asset ids still to store (for --dry-run)
    params: Mapping[str, Any]


def build_sweep_queries(mapping: MediaMapping, scope: Scope, *, page_size: int) -> SweepQueries:
    """Queries for ``scope``, each checked by the GROQ parser."""
    if page_size < 1:
        raise ValueError("a page holds at least one document")
    params: dict[str, Any] = {"types": list(scope.types)}
    params.update({f"type{i}": name for i, name in enumerate(scope.types)})
    needs = " || ".join(
        f"(_type == $type{i} && ({' || '.join(slot_needs_store(f) for f in mapping.types[name])}))"
        for i, name in enumerate(scope.types)
    )
    where = "_type in $types" if scope.everything else f"_type in $types && ({needs})"
    keyset = f"*[{where} && _id > $after] | order(_id asc) [0...{int(page_size)}]"
    branches = ", ".join(
        f'_type == $type{i} => {{"assets": ['
        + ", ".join(slot_assets_to_store(f) for f in mapping.types[name])
        + "]}"
        for i, name in enumerate(scope.types)
    )
    queries = SweepQueries(
        count=f"count(*[{where}])",
        page=f"{keyset} {{_id, _type}}",
        plan=f"{keyset} {{_id, _type, {branches}}}",
        params=params,
    )
    for text in (queries.count, queries.page, queries.plan):
        try:
            parse(text)
        except GroqSyntaxError as exc:
            raise ConfigError(f"the media mapping gives an invalid sweep query: {exc}") from None
    return queries


@dataclass(frozen=True)
class DryRun:
    """What a backfill would do: documents per type, and distinct assets to store."""

    documents: dict[str, int]
    assets_to_store: int  # distinct assets with no stored copy yet
    assets_reused: int  # distinct assets needed that are already stored (a patch only)


@dataclass(frozen=True)
class Progress:
    """A backfill's state, for the display and the log."""

    run: BackfillRun
    jobs: Mapping[JobState, int]  # this run's jobs by state
    elapsed: float  # seconds since this process began the run (or resumed it)
    done_here: int  # jobs that ended since then (for the rate)
    stored: int | None = None  # assets stored by this process (None: the service runs them)
    reused: int | None = None
    throttled: int | None = None  # 429s seen by this process

    @property
    def outstanding(self) -> int:
        return self.jobs.get(JobState.PENDING, 0) + self.jobs.get(JobState.RUNNING, 0)

    @property
    def rate(self) -> float:
        """Documents finished per second, since this process started on the run."""
        return self.done_here / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every document in scope is done, at the current rate."""
        if self.run.total is None or self.rate <= 0:
            return None
        ended = self.jobs.get(JobState.DONE, 0) + self.jobs.get(JobState.FAILED, 0)
        left = max(self.run.total - max(ended, self.run.swept - self.outstanding), 0)
        return left / self.rate


@dataclass(frozen=True)
class Outcome:
    run: BackfillRun
    swept_all: bool  # False when --limit stopped the sweep first
    failures: list[FailedJob]

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class Tally:
    """Stores and reuses counted by the worker of ``--now`` (its reports)."""

    stored: int = 0
    reused: int = 0

    def emit(self, event: Event) -> None:
        if isinstance(event, JobEnded):
            self.stored += event.stored
            self.reused += event.reused


@dataclass
class Backfill:
    """Sweep ``scope`` into ``store``; see the module docstring."""

    sanity: SanityClient
    store: JobStore
    mapping: MediaMapping
    scope: Scope
    page_size: int = 200
    #: Jobs of the run queued but not yet run, at most (by default two pages).
    backlog: int | None = None
    clock: Callable[[], float] = time.time
    sleep: Sleep = asyncio.sleep
    poll: float = 0.5
    tally: Tally | None = None
    throttled: Callable[[], int] | None = None
    queries: SweepQueries = field(init=False)

    def __post_init__(self) -> None:
        self.queries = build_sweep_queries(self.mapping, self.scope, page_size=self.page_size)

    async def count(self) -> int:
        result = await self.sanity.query(self.queries.count, self.queries.params)
        if not isinstance(result, int):
            raise InvalidResponse("Sanity", 200, "count() did not return a number")
        return result

    async def page(self, after: str, *, plan: bool = False) -> list[dict[str, Any]]:
        """The next page of documents in scope, after the id ``after`` ("" for the first)."""
        text = self.queries.plan if plan else self.queries.page
        result = await self.sanity.query(text, {**self.queries.params, "after": after})
        if not isinstance(result, list) or not all(
            isinstance(d, dict) and isinstance(d.get("_id"), str) for d in result
        ):
            raise InvalidResponse("Sanity", 200, "a sweep page is not a list of documents")
        return result

    async def dry_run(self, records: AssetRecords) -> DryRun:
        """Count, writing nothing. Holds the distinct asset ids (not documents) in memory."""
        documents = {name: 0 for name in self.scope.types}
        needed: set[str] = set()
        after = ""
        while page := await self.page(after, plan=True):
            for doc in page:
                documents[doc["_type"]] = documents.get(doc["_type"], 0) + 1
                needed.update(_asset_ids(doc.get("assets")))
            after = page[-1]["_id"]
        stored = 0
        for asset_id in needed:
            stored += await records.get(asset_id) is not None
        return DryRun(documents, len(needed) - stored, stored)

    async def run(
        self,
        *,
        limit: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Outcome:
        """Sweep (resuming an unfinished run of the same scope), then wait until every job
        the run queued has ended. ``limit``: sweep at most this many documents now."""
        total = await self.count()
        run = await self.store.begin_backfill(self.scope.name, total=total, now=self.clock())
        resumed = run.cursor is not None
        log.info(
            "backfill_started" if not resumed else "backfill_resumed",
            scope=self.scope.name,
            total=run.total,
            swept=run.swept,
        )
        began, ended_before = self.clock(), await self._ended(run)
        backlog = self.backlog or 2 * self.page_size
        swept_here, swept_all = 0, False

        async def report() -> dict[JobState, int]:
            nonlocal run
            jobs = await self.store.source_counts(JobSource.BACKFILL, since=run.started_at)
            if on_progress is not None:
                latest = await self.store.backfill(self.scope.name)
                run = latest or run
                on_progress(self._progress(run, jobs, began, ended_before))
            return jobs

        while True:
            if limit is not None and swept_here >= limit:
                break
            jobs = await report()
            if jobs[JobState.PENDING] + jobs[JobState.RUNNING] >= backlog:
                await self.sleep(self.poll)
                continue
            page = await self.page(run.cursor or "")
            if limit is not None:
                page = page[: limit - swept_here]
            if not page:
                swept_all = True
                break
            requests = [JobRequest(d["_id"], source=JobSource.BACKFILL) for d in page]
            await self.store.advance_backfill(
                self.scope.name, requests, cursor=page[-1]["_id"], now=self.clock()
            )
            run = await self.store.backfill(self.scope.name) or run
            swept_here += len(page)
        while True:  # the workers finish what was queued
            jobs = await report()
            if jobs[JobState.PENDING] + jobs[JobState.RUNNING] == 0:
                break
            await self.sleep(self.poll)
        if swept_all:
            await self.store.finish_backfill(self.scope.name, now=self.clock())
        final = await self.store.backfill(self.scope.name) or run
        failures = [
            f
            for f in await self.store.failures()
            if f.source is JobSource.BACKFILL and f.failed_at >= run.started_at
        ]
        log.info(
            "backfill_finished" if swept_all else "backfill_paused",
            scope=self.scope.name,
            swept=final.swept,
            failed=len(failures),
        )
        return Outcome(final, swept_all, failures)

    async def _ended(self, run: BackfillRun) -> int:
        jobs = await self.store.source_counts(JobSource.BACKFILL, since=run.started_at)
        return jobs[JobState.DONE] + jobs[JobState.FAILED]

    def _progress(
        self, run: BackfillRun, jobs: Mapping[JobState, int], began: float, ended_before: int
    ) -> Progress:
        ended = jobs.get(JobState.DONE, 0) + jobs.get(JobState.FAILED, 0)
        return Progress(
            run=run,
            jobs=dict(jobs),
            elapsed=self.clock() - began,
            done_here=ended - ended_before,
            stored=None if self.tally is None else self.tally.stored,
            reused=None if self.tally is None else self.tally.reused,
            throttled=None if self.throttled is None else self.throttled(),
        )


def _asset_ids(value: Any) -> list[str]:
    """Flatten the ``assets`` of a plan page's document: strings, arrays and nulls."""
    found: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, list):
            found.extend(x for x in item if isinstance(x, str))
    return found


def format_progress(p: Progress) -> str:
    """One line: documents, assets, rate, 429s and ETA."""
    run = p.run
    total = "?" if run.total is None else f"{run.total:,}"
    parts = [
        f"swept {run.swept:,}/{total}",
        f"done {p.jobs.get(JobState.DONE, 0):,}",
        f"failed {p.jobs.get(JobState.FAILED, 0):,}",
        f"queued {p.outstanding:,}",
    ]
    if p.stored is not None:
        parts.append(f"assets stored {p.stored:,} reused {p.reused or 0:,}")
    parts.append(f"{p.rate:.1f} docs/s")
    if p.throttled is not None:
        parts.append(f"429s {p.throttled}")
    eta = p.eta
    parts.append("ETA " + ("?" if eta is None else _duration(eta)))
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
