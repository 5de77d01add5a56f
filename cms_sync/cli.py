"""The ``cms-sync`` command line.

Exit status: 0 when everything asked for succeeded, 1 when a document failed, 2 for a
usage or configuration error (always one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from cms_sync import __version__, filestack, sanity
from cms_sync.errors import (
    AuthenticationError,
    CmsSyncError,
    ConfigError,
    ConnectError,
)
from cms_sync.log import configure_logging
from cms_sync.mapping import MediaMapping, load_mapping
from cms_sync.planner import Action
from cms_sync.records import MemoryAssetRecords
from cms_sync.retry import RetryPolicy
from cms_sync.settings import Settings, load_settings
from cms_sync.sync import Syncer, SyncReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

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


def _usable_id(document_id: str) -> str | None:
    """Why a document id cannot be synced, or None."""
    if not document_id.strip():
        return "empty document id"
    if document_id.startswith(("drafts.", "versions.")):
        return "only published documents are synced (drafts and versions are not)"
    return None


async def run_sync(
    settings: Settings,
    mapping: MediaMapping,
    document_ids: Sequence[str],
    *,
    dry_run: bool,
    out: TextIO,
) -> int:
    failed = 0
    async with (
        sanity.http_client(settings) as sanity_http,
        filestack.http_client(settings) as filestack_http,
    ):
        retry = RetryPolicy(
            attempts=settings.cms_sync_retry_attempts, initial=settings.cms_sync_retry_backoff
        )
        syncer = Syncer(
            sanity=sanity.SanityClient(sanity_http, dataset=settings.sanity_dataset, retry=retry),
            filestack=filestack.FilestackClient.from_settings(
                filestack_http, settings, retry=retry
            ),
            mapping=mapping,
            allowed_hosts=settings.cms_sync_allowed_asset_hosts,
            records=MemoryAssetRecords(),
            store_concurrency=settings.cms_sync_store_concurrency,
            max_replans=settings.cms_sync_max_replans,
        )
        for document_id in dict.fromkeys(document_ids):
            problem = _usable_id(document_id)
            if problem is not None:
                print(f"{document_id}: error: {problem}", file=out, flush=True)
                failed += 1
                continue
            report = await syncer.sync(document_id, dry_run=dry_run)
            lines = (
                format_plan(report) if dry_run and report.error is None else [format_report(report)]
            )
            print("\n".join(lines), file=out, flush=True)
            blocked = report.plan is not None and report.plan.count(Action.BLOCKED) > 0
            if not report.ok or (dry_run and blocked):
                failed += 1
    return EXIT_OK if failed == 0 else EXIT_FAILED


def _cmd_sync(args: argparse.Namespace, settings: Settings, mapping: MediaMapping) -> int:
    return asyncio.run(
        run_sync(settings, mapping, args.document_ids, dry_run=args.dry_run, out=sys.stdout)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        mapping = load_mapping(settings.cms_sync_config)
    except ConfigError as exc:
        print(f"cms-sync: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(level=settings.cms_sync_log_level, fmt=settings.cms_sync_log_format)
    try:
        code: int = args.func(args, settings, mapping)
    except KeyboardInterrupt:
        print("cms-sync: interrupted", file=sys.stderr)
        return 130
    return code
