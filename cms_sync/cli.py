"""The ``cms-sync`` command line.

Exit status: 0 when everything asked for succeeded, 1 when a document failed, 2 for a
usage or configuration error (always one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import httpx
import structlog

from cms_sync import __version__, checks, groq, operations, sanity
from cms_sync.app import WorkerMode, check_settings, create_app
from cms_sync.backfill import Backfill, Progress, Tally, format_progress, scope_for
from cms_sync.checks import Check
from cms_sync.dataset import DatasetError, parse_export
from cms_sync.deliveries import shown_id
from cms_sync.errors import (
    AuthenticationError,
    CmsSyncError,
    ConfigError,
    ConnectError,
)
from cms_sync.events import Fanout, LogEvents
from cms_sync.jobs import FailedJob, JobState
from cms_sync.log import configure_logging
from cms_sync.mapping import MediaMapping, load_mapping
from cms_sync.operations import ReplayNow, ReplayRun, iso, usable_id
from cms_sync.planner import Action
from cms_sync.scrub import Scrubber
from cms_sync.serving import (
    Server,
    connection_cap,
    raise_open_files_limit,
    read_deadline_protocol,
)
from cms_sync.settings import (
    BackfillFeedSettings,
    LogSettings,
    OperatorSettings,
    Settings,
    SyncCommandSettings,
    load_settings,
    settings_problems,
)
from cms_sync.storage import Storage, open_storage, shown_database
from cms_sync.sync import SyncReport, open_syncer, rate_limiter, retry_policy
from cms_sync.worker import Worker, WorkerOptions, worker_options

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = structlog.get_logger(__name__)

L = TypeVar("L", bound=LogSettings)

_HINTS = {
    ("Sanity", AuthenticationError): "check SANITY_WRITE_TOKEN",
    ("Filestack", AuthenticationError): "check FILESTACK_API_KEY and FILESTACK_APP_SECRET",
    ("Sanity", ConnectError): "check SANITY_API_HOST / SANITY_PROJECT_ID",
    ("Filestack", ConnectError): "check FILESTACK_PROCESS_URL",
}


def describe_error(exc: CmsSyncError) -> str:
    """One line for an error, with a hint naming the setting to check where one applies."""
    text = str(exc)
    service = getattr(exc, "service", None)
    for (hint_service, cls), hint in _HINTS.items():
        if service == hint_service and isinstance(exc, cls):
            return f"{text} ({hint})"
    return text


def format_report(report: SyncReport) -> str:
    """``product-1: stored 4, reused 1, skipped 1; patched`` or ``product-1: error: ...``."""
    if report.error is not None:
        return f"{report.document_id}: error: {describe_error(report.error)}"
    line = (
        f"{report.document_id}: stored {report.stored}, reused {report.reused}, "
        f"skipped {report.skipped}"
    )
    if report.patched:
        line += "; patched"
    elif not report.failures:
        line += "; already in sync"
    if report.failures:
        first = report.failures[0]
        more = f" (+{len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        line += (
            f"; failed {len(report.failures)}: {first.slot}: {describe_error(first.error)}{more}"
        )
    return line


def format_plan(report: SyncReport) -> list[str]:
    """The dry-run view: a summary line and one line per media slot."""
    if report.plan is None:
        return [format_report(report)]
    plan = report.plan
    doc = plan.document
    summary = ", ".join(
        f"{plan.count(action)} {label}"
        for action, label in (
            (Action.STORE, "to store"),
            (Action.IN_SYNC, "in sync"),
            (Action.EMPTY, "empty"),
            (Action.BLOCKED, "blocked"),
        )
    )
    lines = [f"{doc.id} ({doc.type}, rev {doc.rev}): {summary}; dry run, nothing sent"]
    for slot_plan in plan.slots:
        asset = f" [{slot_plan.slot.asset.id}]" if slot_plan.slot.asset else ""
        lines.append(
            f"  {slot_plan.slot.path}: {slot_plan.action.value}: {slot_plan.reason}{asset}"
        )
    return lines


async def run_sync(
    settings: SyncCommandSettings,
    mapping: MediaMapping,
    document_ids: Sequence[str],
    *,
    dry_run: bool,
    out: TextIO,
) -> int:
    failed = 0
    scrub = Scrubber(settings.secret_values())
    async with (
        open_storage(
            settings.cms_sync_database, ingest_timeout=settings.cms_sync_ingest_timeout
        ) as storage,
        open_syncer(settings, mapping, storage.records) as syncer,
    ):
        for document_id in dict.fromkeys(document_ids):
            problem = usable_id(document_id)
            if problem is not None:
                print(f"{shown_id(document_id)}: error: {problem}", file=out, flush=True)
                failed += 1
                continue
            report = await syncer.sync(document_id, dry_run=dry_run)
            show_plan = dry_run and report.error is None
            lines = format_plan(report) if show_plan else [format_report(report)]
            print(scrub("\n".join(lines)), file=out, flush=True)
            blocked = report.plan is not None and report.plan.count(Action.BLOCKED) > 0
            if not report.ok or (dry_run and blocked):
                failed += 1
    return EXIT_OK if failed == 0 else EXIT_FAILED


async def run_replay(
    settings: OperatorSettings | Settings,
    document_ids: Sequence[str],
    *,
    all_failed: bool,
    out: TextIO,
    here: ReplayHere | None = None,
) -> int:
    """Queue documents again; with ``here``, also run them here and report like ``sync``."""
    async with open_storage(settings.cms_sync_database, create=False) as storage:
        replayed = await operations.replay(
            storage, document_ids, all_failed=all_failed, now=time.time()
        )
        for doc_id, problem in replayed.refused.items():
            print(f"{shown_id(doc_id)}: error: {problem}", file=out)
        if not replayed.queued:
            if not replayed.refused:
                print("no failed documents to replay", file=out)
            return EXIT_OK if replayed.ok else EXIT_FAILED
        for doc_id in replayed.unseen:
            print(
                f"{doc_id}: never seen by this store "
                f"(no job in {shown_database(settings.cms_sync_database)}); "
                "queued anyway",
                file=out,
            )
        refused = EXIT_OK if replayed.ok else EXIT_FAILED
        if here is None:
            print(f"queued {len(replayed.queued)}: {', '.join(replayed.queued)}", file=out)
            return refused
        return max(refused, await here.run(storage, replayed.queued, out=out))


@dataclass(frozen=True)
class ReplayHere:
    """``replay --now``: what it needs beyond the database, to sync in this process."""

    settings: Settings
    mapping: MediaMapping

    async def run(self, storage: Storage, document_ids: Sequence[str], *, out: TextIO) -> int:
        """One line per document, as ``sync`` prints them."""
        scrub = Scrubber(self.settings.secret_values())
        runner = ReplayNow(worker_options(self.settings), scrub=scrub)
        failed = 0
        async with open_syncer(self.settings, self.mapping, storage.records) as syncer:
            async for run in runner.run(storage, syncer, document_ids):
                print(scrub(format_replay_run(run)), file=out, flush=True)
                failed += 0 if run.ok else 1
        return EXIT_OK if failed == 0 else EXIT_FAILED


async def run_backfill(
    settings: BackfillFeedSettings | Settings,
    mapping: MediaMapping,
    *,
    types: Sequence[str],
    everything: bool,
    dry_run: bool,
    limit: int | None,
    now: bool,
    out: TextIO,
    tty: bool | None = None,
    progress_every: float = 5.0,
    page_size: int = 200,
    poll: float = 0.5,
) -> int:
    """Sweep the dataset into the job store; ``now``: run the jobs here as well."""
    scope = scope_for(mapping, types, everything=everything)
    scrub = Scrubber(settings.secret_values())
    limiter = rate_limiter(settings)
    tally = Tally()
    display = ProgressDisplay(out, tty=out.isatty() if tty is None else tty, every=progress_every)
    async with (
        open_storage(
            settings.cms_sync_database, ingest_timeout=settings.cms_sync_ingest_timeout
        ) as storage,
        sanity.http_client(settings) as http,
    ):
        client = sanity.SanityClient(
            http,
            dataset=settings.sanity_dataset,
            retry=retry_policy(settings),
            scrub=scrub,
            limiter=limiter,
        )
        backfill = Backfill(client, storage.jobs, mapping, scope, page_size=page_size, poll=poll)
        if dry_run:
            plan = await backfill.dry_run(storage.records)
            for name, count in plan.documents.items():
                print(f"{name}: {count} documents", file=out)
            print(
                f"assets: {plan.assets_to_store} to store, {plan.assets_reused} already stored",
                file=out,
            )
            return EXIT_OK
        if not now:
            outcome = await backfill.run(limit=limit, on_progress=display)
        else:
            assert isinstance(settings, Settings)

            backfill.tally = tally
            backfill.throttled = lambda: sum(s.throttled for s in limiter.stats.values())
            async with open_syncer(settings, mapping, storage.records, limiter=limiter) as syncer:
                worker = Worker(
                    storage.jobs,
                    syncer,
                    backfill_worker_options(settings),
                    scrub=scrub,
                    events=Fanout([LogEvents(), tally]),
                )
                worker.start()
                try:
                    outcome = await backfill.run(limit=limit, on_progress=display)
                finally:
                    await worker.stop()
    display.finish()
    run = outcome.run
    state = "finished" if outcome.swept_all else f"paused after --limit {limit}"
    print(f"backfill {scope.name} {state}: {run.swept} documents swept", file=out)
    for f in outcome.failures:
        print(scrub(format_failure(f)), file=out)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def backfill_worker_options(settings: Settings) -> WorkerOptions:
    """The worker of ``backfill --now``: this process does nothing else, and a job spends
    most of its time waiting on its stores, so twice as many jobs run as stores may be
    in flight (``CMS_SYNC_WORKERS`` if higher): the stores never wait for a job."""
    options = worker_options(settings)
    jobs = max(options.concurrency, 2 * settings.cms_sync_store_concurrency)
    return dataclasses.replace(options, concurrency=jobs)


class ProgressDisplay:
    """On a terminal, one line rewritten in place; elsewhere a log line every ``every`` s."""

    def __init__(self, out: TextIO, *, tty: bool, every: float) -> None:
        self._out, self._tty, self._every = out, tty, every
        self._last: float | None = None
        self._shown = False

    def __call__(self, progress: Progress) -> None:
        moment = time.monotonic()
        if self._tty:
            print(f"\r\x1b[2K{format_progress(progress)}", end="", file=self._out, flush=True)
            self._shown = True
        elif self._last is None or moment - self._last >= self._every:
            self._last = moment
            log.info(
                "backfill_progress",
                swept=progress.run.swept,
                total=progress.run.total,
                done=progress.jobs.get(JobState.DONE, 0),
                failed=progress.jobs.get(JobState.FAILED, 0),
                queued=progress.outstanding,
                stored=progress.stored,
                reused=progress.reused,
                throttled=progress.throttled,
                rate=round(progress.rate, 2),
                eta=None if progress.eta is None else round(progress.eta),
            )

    def finish(self) -> None:
        if self._shown:
            print(file=self._out)


def format_replay_run(run: ReplayRun) -> str:
    if run.report is not None:
        return format_report(run.report)
    error = "" if run.ok else "error: "
    return f"{run.document_id}: {error}{run.message}"


def format_failure(f: FailedJob) -> str:
    """One failed document, as ``failures`` and ``backfill`` list it."""
    return f"{f.document_id}\t{f.attempts} attempts\t{iso(f.failed_at)}\t{f.last_error}"


async def run_failures(settings: OperatorSettings, *, as_json: bool, out: TextIO) -> int:
    scrub = Scrubber(settings.secret_values())
    async with open_storage(settings.cms_sync_database, create=False) as storage:
        failed = await operations.failures(storage, scrub=scrub)
    if as_json:
        rows = [
            {
                "document_id": f.document_id,
                "attempts": f.attempts,
                "last_error": f.last_error,
                "failed_at": iso(f.failed_at),
            }
            for f in failed
        ]
        print(json.dumps(rows, indent=2), file=out)
    elif not failed:
        print("no failed documents", file=out)
    else:
        for f in failed:
            print(format_failure(f), file=out)
    return EXIT_OK


async def run_orphans(settings: OperatorSettings, *, as_json: bool, out: TextIO) -> int:
    scrub = Scrubber(settings.secret_values())
    async with open_storage(settings.cms_sync_database, create=False) as storage:
        found = await operations.orphans(storage, scrub=scrub)
    if as_json:
        print(
            json.dumps(
                {
                    "orphans": [
                        {**dataclasses.asdict(o), "noticed_at": iso(o.noticed_at)}
                        for o in found.handles
                    ],
                    "unseen_copies": [dataclasses.asdict(u) for u in found.unseen],
                },
                indent=2,
            ),
            file=out,
        )
        return EXIT_OK
    if not found.handles and not found.unseen:
        print("no orphans", file=out)
    for o in found.handles:
        print(
            f"{o.handle}\t{o.asset_id}\tkey {o.storage_key or '?'}\t{iso(o.noticed_at)}\t"
            f"{o.reason}",
            file=out,
        )
    for u in found.unseen:
        print(
            f"(handle unknown)\t{u.asset_id}\tkey {u.storage_key or '?'}\t"
            f"{u.possible} store(s) may have made a copy that no notification named",
            file=out,
        )
    if found.handles or found.unseen:
        print(
            "nothing is deleted: with one storage key per asset an orphan names the same "
            "stored object as the kept handle (see README, Orphans)",
            file=out,
        )
    return EXIT_OK


async def run_status(settings: OperatorSettings, *, as_json: bool, out: TextIO) -> int:
    now = time.time()
    async with open_storage(settings.cms_sync_database, create=False) as storage:
        state = await operations.status(storage, now=now)
    if as_json:
        data: dict[str, Any] = {
            "jobs": {s.value: state.jobs[s] for s in JobState},
            "oldest_pending_age_seconds": state.oldest_pending_age,
            "stored_assets": state.stored_assets,
            "unanswered_stores": state.unanswered_stores,
            "running": {
                owner: [
                    {
                        "document_id": job.document_id,
                        "attempts": job.attempts,
                        "started_at": iso(job.started_at),
                        "lease_until": iso(job.lease_until),
                    }
                    for job in jobs
                ]
                for owner, jobs in state.by_owner().items()
            },
        }
        print(json.dumps(data, indent=2), file=out)
        return EXIT_OK
    jobs = ", ".join(f"{s} {state.jobs[s]}" for s in JobState)
    age = state.oldest_pending_age
    oldest = "-" if age is None else f"{age:.0f} s"
    print(
        f"jobs: {jobs}; oldest pending: {oldest}; stored assets: {state.stored_assets}; "
        f"unanswered stores: {state.unanswered_stores}",
        file=out,
    )
    for owner, running in state.by_owner().items():
        docs = ", ".join(
            f"{job.document_id} ({now - job.started_at:.0f} s, attempt {job.attempts})"
            for job in running
        )
        print(f"running on {owner}: {docs}", file=out)
    return EXIT_OK


def _prepare(section: type[L]) -> L:
    """Load the one settings section a command needs, and set up logging from it."""
    settings = load_settings(section)
    configure_logging(
        level=settings.cms_sync_log_level,
        fmt=settings.cms_sync_log_format,
        scrub=Scrubber(settings.secret_values()),
    )
    return settings


def _cmd_sync(args: argparse.Namespace) -> int:
    settings = _prepare(SyncCommandSettings)
    mapping = load_mapping(settings.cms_sync_config)
    return asyncio.run(
        run_sync(settings, mapping, args.document_ids, dry_run=args.dry_run, out=sys.stdout)
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _prepare(Settings)
    mapping = load_mapping(settings.cms_sync_config)
    verify = not args.insecure_skip_signature
    check_settings(settings, verify_signatures=verify)

    async def serve() -> bool:
        # The storage is opened in the loop that serves (a connection pool is bound to
        # its loop), and before uvicorn starts, so a bad CMS_SYNC_DATABASE is one line.
        async with open_storage(
            settings.cms_sync_database, ingest_timeout=settings.cms_sync_ingest_timeout
        ) as storage:
            open_files, hard = raise_open_files_limit()
            max_connections = connection_cap(open_files, settings.cms_sync_max_connections)
            log.info(
                "open_files_limit", soft=open_files, hard=hard, max_connections=max_connections
            )
            app = create_app(
                settings,
                mapping=mapping,
                storage=storage,
                verify_signatures=verify,
                worker_mode=args.worker_mode,
            )
            if args.worker_mode is WorkerMode.NONE:
                log.info(
                    "worker_not_started",
                    message="--no-worker: this process acknowledges deliveries; another "
                    "cms-sync serve on the same database syncs them",
                )
            config = uvicorn.Config(
                app,
                host=args.host or settings.cms_sync_host,
                port=settings.cms_sync_port if args.port is None else args.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                loop="asyncio",  # AcceptErrorLog knows asyncio's accept errors, not uvloop's
                timeout_graceful_shutdown=int(settings.cms_sync_shutdown_grace) + 5,
                http=read_deadline_protocol(
                    settings.cms_sync_read_timeout, settings.cms_sync_http_parser
                ),
                limit_concurrency=max_connections,
            )
            server = Server(config)
            await server.serve()
            return server.started

    # uvicorn re-raises the SIGTERM or SIGINT it shut down on, once it has; with these
    # handlers in place that lets the storage close before the process exits.
    stopped_by: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
    started = asyncio.run(serve())
    if stopped_by:
        log.info("stopped", signal=signal.Signals(stopped_by[0]).name)
    return EXIT_OK if started else EXIT_FAILED


def _cmd_replay(args: argparse.Namespace) -> int:
    if not args.document_ids and not args.all_failed:
        raise ConfigError("replay needs DOC_ID... or --all-failed")
    settings: OperatorSettings | Settings
    here = None
    if args.now:  # syncs here: needs the credentials and the mapping
        full = _prepare(Settings)
        settings, here = full, ReplayHere(full, load_mapping(full.cms_sync_config))
    else:
        settings = _prepare(OperatorSettings)
    return asyncio.run(
        run_replay(
            settings,
            args.document_ids,
            all_failed=args.all_failed,
            here=here,
            out=sys.stdout,
        )
    )


def _cmd_backfill(args: argparse.Namespace) -> int:
    settings: BackfillFeedSettings | Settings
    settings = _prepare(Settings) if args.now else _prepare(BackfillFeedSettings)
    mapping = load_mapping(settings.cms_sync_config)
    return asyncio.run(
        run_backfill(
            settings,
            mapping,
            types=args.types,
            everything=args.all,
            dry_run=args.dry_run,
            limit=args.limit,
            now=args.now,
            out=sys.stdout,
        )
    )


def _cmd_failures(args: argparse.Namespace) -> int:
    settings = _prepare(OperatorSettings)
    return asyncio.run(run_failures(settings, as_json=args.json, out=sys.stdout))


def _cmd_orphans(args: argparse.Namespace) -> int:
    settings = _prepare(OperatorSettings)
    return asyncio.run(run_orphans(settings, as_json=args.json, out=sys.stdout))


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _prepare(OperatorSettings)
    return asyncio.run(run_status(settings, as_json=args.json, out=sys.stdout))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def caret(query: str, position: int) -> str:
    """The query line holding ``position``, with a caret under it."""
    start = query.rfind("\n", 0, position) + 1
    end = query.find("\n", position)
    line = query[start : end if end >= 0 else len(query)]
    return f"{line}\n{' ' * (position - start)}^"


def run_groq(
    query: str, dataset_text: str | None, raw_params: Sequence[str], *, out: TextIO, err: TextIO
) -> int:
    """``cms-sync groq``: evaluate a query over an export and print JSON."""
    params: dict[str, Any] = {}
    for raw in raw_params:
        name, sep, value = raw.partition("=")
        name = name.removeprefix("$")
        if not sep or not name:
            raise ConfigError(f"--param {raw!r}: expected NAME=JSON")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            hint = "quote strings: '\"x\"'"
            raise ConfigError(f"--param {name}: {value!r} is not JSON ({hint})") from None
    documents = _parse_export(dataset_text, "--dataset") if dataset_text is not None else []
    try:
        result = groq.evaluate(query, documents, params)
    except groq.GroqSyntaxError as exc:
        print(f"cms-sync: {exc.message} (line {exc.line}, column {exc.column})", file=err)
        print(caret(query, exc.position), file=err)
        return EXIT_FAILED
    except groq.GroqEvaluationError as exc:
        print(f"cms-sync: {exc}", file=err)
        return EXIT_FAILED
    print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    return EXIT_OK


def _read_text(path: str | None, option: str) -> str | None:
    """The text of the file at ``path`` (``-`` is stdin), or None without a path."""
    if path is None:
        return None
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror}") from None


def _parse_export(text: str, option: str) -> list[dict[str, Any]]:
    try:
        return parse_export(text)
    except DatasetError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _cmd_groq(args: argparse.Namespace) -> int:
    text = _read_text(args.dataset, "--dataset")
    return run_groq(args.query, text, args.param, out=sys.stdout, err=sys.stderr)


def run_emulate(
    args: argparse.Namespace,
    env: Mapping[str, str],
    *,
    out: TextIO,
    stop: threading.Event,
) -> int:
    """``cms-sync emulate``: both emulators until ``stop`` is set."""
    # Imported here: the other commands start faster without them.
    from cms_sync.emulators import SANITY_LIMITS, Faults, Webhook
    from cms_sync.emulators.filestack import Notifier
    from cms_sync.emulators.running import running as run_emulators

    text = _read_text(args.data, "--data")
    documents = _parse_export(text, "--data") if text is not None else []
    try:
        groq.parse(args.webhook_filter, mode="delta")
    except groq.GroqSyntaxError as exc:
        where = f"column {exc.column}"
        raise ConfigError(f"--webhook-filter: {exc.message} at {where}") from None
    faults = Faults(rate_limits=SANITY_LIMITS) if args.rate_limits else None
    with run_emulators(
        documents,
        sanity_port=args.sanity_port,
        filestack_port=args.filestack_port,
        sanity_faults=faults,
        project_id=env.get("SANITY_PROJECT_ID") or "cmsdemo",
        dataset=env.get("SANITY_DATASET") or "production",
        token=env.get("SANITY_WRITE_TOKEN") or secrets.token_urlsafe(18),
        api_key=env.get("FILESTACK_API_KEY") or "emulator-key",
        app_secret=env.get("FILESTACK_APP_SECRET") or None,
    ) as emu:
        if args.webhook:
            emu.lake.add_webhook(
                Webhook(
                    args.webhook,
                    secret=env.get("SANITY_WEBHOOK_SECRET") or None,
                    filter=args.webhook_filter,
                    projection="{_id, _type, _rev}",
                )
            )
        if args.filestack_webhook:
            emu.filestack.notifier = Notifier(
                args.filestack_webhook,
                env.get("FILESTACK_WEBHOOK_SECRET") or secrets.token_urlsafe(24),
            )
        print(f"Content Lake emulator on {emu.sanity_url} ({len(documents)} documents)", file=out)
        print(f"Filestack emulator on {emu.filestack_url}", file=out)
        print("A worker uses them with these settings:", file=out)
        for name, value in emu.worker_env().items():
            if name in _CREDENTIALS and env.get(name):
                print(f"  # {name}: the one in your environment", file=out)
            else:
                print(f"  {name}={value}", file=out)
        print("Running until stopped (Ctrl-C).", file=out)
        out.flush()
        stop.wait()
    return EXIT_OK


#: Printed only when the emulator made them up; a configured credential is never printed.
_CREDENTIALS = (
    "SANITY_WRITE_TOKEN",
    "FILESTACK_API_KEY",
    "FILESTACK_APP_SECRET",
    "FILESTACK_WEBHOOK_SECRET",
)


def _cmd_emulate(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return run_emulate(args, os.environ, out=sys.stdout, stop=stop)


def render_check(check: Check) -> str:
    return f"{check.verdict.value:<4}  {check.name}: {check.message}"


async def run_check(
    out: TextIO,
    *,
    sanity_transport: httpx.AsyncBaseTransport | None = None,
    filestack_transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """``cms-sync check``: one line per check; 0 only when every check passed."""
    problems = settings_problems(Settings)
    settings: Settings | None = None
    if not problems:
        settings = load_settings(Settings)
        try:
            check_settings(settings, verify_signatures=True)
        except ConfigError as exc:
            problems.append(str(exc))
    if settings is None or problems:
        for problem in problems:
            print(render_check(checks.fail("settings", problem)), file=out)
        print(render_check(checks.skipped("the rest", "the settings must load first")), file=out)
        return EXIT_FAILED
    print(render_check(checks.describe_settings(settings)), file=out)
    try:
        mapping = load_mapping(settings.cms_sync_config)
    except ConfigError as exc:
        print(render_check(checks.fail("mapping", str(exc))), file=out)
        print(render_check(checks.skipped("the rest", "the mapping must load first")), file=out)
        return EXIT_FAILED
    print(render_check(checks.describe_mapping(mapping, settings.cms_sync_config)), file=out)
    results = await checks.run_checks(
        settings,
        mapping,
        sanity_transport=sanity_transport,
        filestack_transport=filestack_transport,
    )
    for result in results:
        print(render_check(result), file=out)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _cmd_check(args: argparse.Namespace) -> int:
    configure_logging(level="warning", fmt=os.environ.get("CMS_SYNC_LOG_FORMAT", "auto"))
    return asyncio.run(run_check(sys.stdout))


def _cmd_demo(args: argparse.Namespace) -> int:
    from cms_sync.demo import run_demo

    configure_logging(level="warning")
    return asyncio.run(
        run_demo(
            sys.stdout,
            within=args.timeout,
            keep_running=args.keep_running,
            database=args.database,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cms-sync",
        description="Keep Filestack in step with a Sanity dataset.",
    )
    parser.add_argument("--version", action="version", version=f"cms-sync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sync = commands.add_parser(
        "sync",
        help="sync documents now: store their media in Filestack and patch the handles back",
        description="Sync documents now; one line per document; exit 0 only if all succeeded.",
    )
    sync.add_argument("document_ids", nargs="+", metavar="DOC_ID", help="published document id")
    sync.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan; call neither Filestack nor the mutate API",
    )
    sync.set_defaults(func=_cmd_sync)

    serve = commands.add_parser(
        "serve",
        help="run the webhook service and its worker",
        description="Receive Sanity webhooks on POST /webhooks/sanity and sync in the background.",
    )
    serve.add_argument("--host", help="address to listen on (default CMS_SYNC_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default CMS_SYNC_PORT, 8080)")
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--no-worker",
        action="store_const",
        dest="worker_mode",
        const=WorkerMode.NONE,
        default=WorkerMode.PROCESS,
        help="acknowledge deliveries only; another `cms-sync serve` on the same database "
        "syncs them",
    )
    where.add_argument(
        "--inline-worker",
        action="store_const",
        dest="worker_mode",
        const=WorkerMode.INLINE,
        help="run the worker on the webhook's event loop, in one process (by default it "
        "runs in a child process, so that its work does not take turns with the "
        "acknowledgements on one loop)",
    )
    serve.add_argument(
        "--insecure-skip-signature",
        action="store_true",
        help="accept unsigned deliveries: local experiments only, never in production",
    )
    serve.set_defaults(func=_cmd_serve)

    failures = commands.add_parser("failures", help="list documents whose sync failed")
    failures.add_argument("--json", action="store_true", help="print JSON")
    failures.set_defaults(func=_cmd_failures)

    orphans = commands.add_parser(
        "orphans",
        help="list Filestack handles made for our assets that no document uses (deletes nothing)",
    )
    orphans.add_argument("--json", action="store_true", help="print JSON")
    orphans.set_defaults(func=_cmd_orphans)

    replay = commands.add_parser(
        "replay",
        help="queue documents again (the running service picks them up)",
        description="Queue documents again; --now runs them here and reports like sync.",
    )
    replay.add_argument("document_ids", nargs="*", metavar="DOC_ID")
    replay.add_argument("--all-failed", action="store_true", help="every failed document")
    replay.add_argument("--now", action="store_true", help="run them in the foreground")
    replay.set_defaults(func=_cmd_replay)

    backfill = commands.add_parser(
        "backfill",
        help="sweep the documents that existed before the worker into the job store",
        description=(
            "Queue every published document of the mapped types whose media still need a "
            "store (--all: every document), a page at a time; the running service's workers "
            "run them (--now: this process does). A killed backfill resumes where it stopped. "
            "Exit 0 once every document converged, 1 with the failures listed."
        ),
    )
    backfill.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="T",
        help="only this mapped type (repeatable)",
    )
    backfill.add_argument("--all", action="store_true", help="re-check every document")
    backfill.add_argument(
        "--dry-run", action="store_true", help="print counts per type and assets to store"
    )
    backfill.add_argument(
        "--limit", type=_positive, metavar="N", help="sweep at most N documents this time"
    )
    backfill.add_argument("--now", action="store_true", help="run the jobs in this process")
    backfill.set_defaults(func=_cmd_backfill)

    check = commands.add_parser(
        "check",
        help="check the settings, the mapping, Sanity, Filestack and the database",
        description=(
            "Check the configuration end to end, one line per check; writes nothing to "
            "Sanity and stores nothing in Filestack. Exit 0 only when every check passes."
        ),
    )
    check.set_defaults(func=_cmd_check)

    status = commands.add_parser("status", help="job counts, oldest pending age, stored assets")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)

    groq_cmd = commands.add_parser(
        "groq",
        help="evaluate a GROQ query over a dataset export and print JSON",
        description="Evaluate a GROQ query, offline, with cms-sync's GROQ engine.",
    )
    groq_cmd.add_argument("query", metavar="QUERY")
    groq_cmd.add_argument(
        "--dataset", metavar="FILE", help="NDJSON export or JSON array; - reads stdin"
    )
    groq_cmd.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a $NAME parameter, as JSON (repeatable)",
    )
    groq_cmd.set_defaults(func=_cmd_groq)

    emulate = commands.add_parser(
        "emulate",
        help="run the Content Lake and Filestack emulators on local ports",
        description=(
            "Serve Sanity's query, mutate and doc APIs, asset URLs and webhooks, and "
            "Filestack's store-from-URL, on 127.0.0.1. Credentials come from "
            "SANITY_WRITE_TOKEN, SANITY_DATASET, SANITY_PROJECT_ID, FILESTACK_API_KEY and "
            "FILESTACK_APP_SECRET when set, so a worker's own settings work."
        ),
    )
    emulate.add_argument("--sanity-port", type=int, default=3333, metavar="P")
    emulate.add_argument("--filestack-port", type=int, default=3334, metavar="Q")
    emulate.add_argument("--data", metavar="FILE", help="NDJSON export or JSON array to load")
    emulate.add_argument(
        "--webhook",
        metavar="URL",
        help="deliver a signed webhook here (secret: SANITY_WEBHOOK_SECRET)",
    )
    emulate.add_argument(
        "--filestack-webhook",
        metavar="URL",
        help=(
            "notify every store here, signed as Filestack does (secret: "
            "FILESTACK_WEBHOOK_SECRET, or one made up and printed)"
        ),
    )
    emulate.add_argument(
        "--webhook-filter",
        default='_type in ["product", "post"]',
        metavar="GROQ",
        help="the webhook's filter, in delta mode",
    )
    emulate.add_argument(
        "--rate-limits",
        action="store_true",
        help="answer 429 above Sanity's 25 mutate requests and 500 calls per second",
    )
    emulate.set_defaults(func=_cmd_emulate)

    demo = commands.add_parser(
        "demo",
        help="run the whole loop on this machine: emulators, service, a small catalogue",
        description=(
            "Start both emulators and the service, publish a small catalogue, and exit 0 "
            "once every document carries its Filestack fields. No credentials, no network."
        ),
    )
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep everything up afterwards, with the operator page on (its token is printed)",
    )
    demo.add_argument(
        "--database",
        metavar="PATH_OR_URL",
        help="the job store: a SQLite path or a postgresql:// URL (default: a temporary file)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"cms-sync: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cms-sync: interrupted", file=sys.stderr)
        return 130
    return code
