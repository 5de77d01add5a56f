"""``cms-sync check``: does this configuration work, end to end, before any delivery?

Each check is one line, in plain words: what works, or what is wrong and which setting
to change. Nothing is written to Sanity or stored in Filestack:

- **sanity**: an authenticated read of a few recent documents of the mapped types, with
  the worker's own query (a bad token, a dataset or project not found, no way to connect);
- **assets**: the asset URLs of those documents against the allow-list, since a host that
  is not on it blocks every slot that uses it;
- **filestack**: a store request for a source that does not exist, under an allow-listed
  prefix. Filestack checks the API key, then the policy and signature made with the app
  secret, and only then fetches the source: an "invalid URL" answer proves the
  credentials without storing a byte (a refused key or policy says which);
- **database**: the job store can be opened and written within two seconds (SQLite: or
  its directory can hold a new database).

The checks return values; the CLI prints them. Settings and mapping are validated before
(by the CLI, where they are loaded), since nothing else can run without them.
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cms_sync import filestack, sanity
from cms_sync.allowlist import AllowedHost, is_loopback, refusal_reason
from cms_sync.document import Document, parse_document
from cms_sync.errors import (
    AuthenticationError,
    CmsSyncError,
    ConfigError,
    InvalidResponse,
    RejectedError,
    StoreUnavailable,
    TransportError,
)
from cms_sync.mapping import MediaMapping
from cms_sync.queries import build_document_query
from cms_sync.retry import RetryPolicy, request_backoff
from cms_sync.scrub import Scrubber
from cms_sync.settings import Settings
from cms_sync.storage import is_postgres, open_storage, shown_database

#: Documents read to check asset hosts: the most recently updated of the mapped types.
SAMPLE = 5
#: The database must prove it can be written within this many seconds.
WRITE_BUDGET = 2.0


class Verdict(enum.StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"  # could not be checked because an earlier check failed


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    message: str

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


def ok(name: str, message: str) -> Check:
    return Check(name, Verdict.OK, message)


def fail(name: str, message: str) -> Check:
    return Check(name, Verdict.FAIL, message)


def skipped(name: str, message: str) -> Check:
    return Check(name, Verdict.SKIP, message)


def describe_settings(settings: Settings) -> Check:
    """The settings loaded: say what they point at (never a secret)."""
    signed = "signed policies" if settings.filestack_app_secret is not None else "no app secret"
    notices = (
        "Filestack notifications verified on /webhooks/filestack"
        if settings.filestack_webhook_secret is not None
        else "Filestack notifications off (FILESTACK_WEBHOOK_SECRET unset)"
    )
    return ok(
        "settings",
        f"project {settings.sanity_project_id!r}, dataset {settings.sanity_dataset!r}; "
        f"Filestack with {signed}; {notices}; "
        f"database {shown_database(settings.cms_sync_database)}",
    )


def describe_mapping(mapping: MediaMapping, path: Path | None) -> Check:
    types = "; ".join(
        f"{name}: " + ", ".join(f"{f.name}[]" if f.is_array else f.name for f in fields)
        for name, fields in mapping.types.items()
    )
    return ok("mapping", f"{types} ({path if path is not None else 'built-in default'})")


async def run_checks(
    settings: Settings,
    mapping: MediaMapping,
    *,
    sanity_transport: httpx.AsyncBaseTransport | None = None,
    filestack_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Check]:
    """Every check after settings and mapping, in order (see the module docstring)."""
    once = RetryPolicy(request_backoff(attempts=1, initial=0.0))  # a probe, not a job
    scrub = Scrubber(settings.secret_values())
    results: list[Check] = []
    async with sanity.http_client(settings, transport=sanity_transport) as http:
        client = sanity.SanityClient(http, dataset=settings.sanity_dataset, retry=once, scrub=scrub)
        documents = await _probe_sanity(client, settings, mapping, results)
    results.append(_check_assets(documents, settings.asset_allow_list))
    async with filestack.http_client(settings, transport=filestack_transport) as http:
        store = filestack.FilestackClient.from_settings(http, settings, retry=once)
        results.append(await _probe_filestack(store, settings, clock))
    results.append(await _check_database(settings.cms_sync_database))
    return results


# -- sanity ------------------------------------------------------------------------------
async def _probe_sanity(
    client: sanity.SanityClient,
    settings: Settings,
    mapping: MediaMapping,
    results: list[Check],
) -> list[Document] | None:
    """Read the newest documents of the mapped types; None when Sanity could not be read."""
    types = list(mapping.type_names)
    try:
        ids = await client.query(
            f"*[_type in $types] | order(_updatedAt desc) [0...{SAMPLE}]._id", {"types": types}
        )
        if not isinstance(ids, list):
            raise InvalidResponse(sanity.SERVICE, 200, "the query answered no list of ids")
        query = build_document_query(mapping)
        found = await client.query(query.text, query.params([str(i) for i in ids])) if ids else []
    except CmsSyncError as exc:
        results.append(fail("sanity", _sanity_problem(exc, settings)))
        return None
    documents = [parse_document(doc, mapping) for doc in found or []]
    where = f"project {settings.sanity_project_id!r}, dataset {settings.sanity_dataset!r}"
    if not documents:
        results.append(
            ok("sanity", f"token accepted by {where}; no {' or '.join(types)} documents yet")
        )
    else:
        shown = ", ".join(d.id for d in documents[:3])
        results.append(ok("sanity", f"read {len(documents)} documents from {where} ({shown})"))
    return documents


def _sanity_problem(exc: CmsSyncError, settings: Settings) -> str:
    project, dataset = settings.sanity_project_id, settings.sanity_dataset
    status = getattr(exc, "status", None)
    if isinstance(exc, AuthenticationError) and status == 401:
        return (
            "SANITY_WRITE_TOKEN was refused (HTTP 401): the token is wrong, revoked, or "
            f"belongs to another project than {project!r}"
        )
    if isinstance(exc, AuthenticationError):
        return (
            f"SANITY_WRITE_TOKEN may not read dataset {dataset!r} (HTTP {status}): give it "
            "the Editor role (the worker writes too)"
        )
    if isinstance(exc, RejectedError) and status == 404:
        if "dataset" in str(exc).lower():
            return f"dataset {dataset!r} not found in project {project!r} (SANITY_DATASET)"
        return f"project {project!r} not found, or no API there (SANITY_PROJECT_ID): {exc}"
    if isinstance(exc, TransportError):
        return f"cannot reach Sanity at {settings.sanity_base_url}: {exc}"
    return str(exc)


# -- asset hosts -------------------------------------------------------------------------
def _check_assets(documents: list[Document] | None, allowed: tuple[AllowedHost, ...]) -> Check:
    if documents is None:
        return Check("assets", Verdict.SKIP, "no documents read from Sanity")
    urls = [
        (doc.id, slot.path, slot.asset.url)
        for doc in documents
        for slot in doc.slots
        if slot.asset is not None and slot.asset.url
    ]
    for doc_id, path, url in urls:
        reason = refusal_reason(url, allowed)
        if reason is not None:
            return fail(
                "assets",
                f"{doc_id} {path}: {reason}; add its host to CMS_SYNC_ALLOWED_ASSET_HOSTS "
                "if it is yours",
            )
    if not urls:
        return ok("assets", "no asset URLs in the documents read")
    return ok("assets", f"all {len(urls)} asset URLs read are on the allow-list")


# -- filestack ---------------------------------------------------------------------------
async def _probe_filestack(
    client: filestack.FilestackClient, settings: Settings, clock: Callable[[], float]
) -> Check:
    source = probe_source(settings.asset_allow_list)
    if source is None:
        return Check("filestack", Verdict.SKIP, "no allow-listed host to name a probe source on")
    signed = settings.filestack_app_secret is not None
    what = "API key and app secret (policy)" if signed else "API key"
    try:
        await client.store_url(source, filename=None, tags={"cms_sync_check": "1"})
    except RejectedError as exc:
        return _filestack_verdict(exc, signed, what)
    except InvalidResponse as exc:
        if "invalid application" in str(exc).lower():
            return fail("filestack", _INVALID_KEY)
        return fail("filestack", f"unexpected answer to the probe: {exc}")
    except TransportError as exc:
        return fail("filestack", f"cannot reach {settings.filestack_process_url}: {exc}")
    except CmsSyncError as exc:
        return fail("filestack", f"unexpected answer to the probe: {exc}")
    # The source exists after all (nothing of ours is named like it): stored, harmlessly.
    return ok("filestack", f"{what} accepted")


_INVALID_KEY = "FILESTACK_API_KEY was refused: Filestack knows no application with this key"


def _filestack_verdict(exc: RejectedError, signed: bool, what: str) -> Check:
    text = str(exc).lower()
    if "invalid application" in text:
        return fail("filestack", _INVALID_KEY)
    if "policy" in text or "signature" in text or isinstance(exc, AuthenticationError):
        if not signed:
            return fail(
                "filestack",
                "Filestack requires a signed policy for this key (security is on): set "
                f"FILESTACK_APP_SECRET ({exc})",
            )
        return fail(
            "filestack",
            "the policy signed with FILESTACK_APP_SECRET was refused: is it the app secret "
            f"of this key's application? ({exc})",
        )
    if exc.status == 400:
        # The credentials passed; Filestack went on to fetch a source that is not there.
        return ok("filestack", f"{what} accepted (probe source not fetched, as intended)")
    return fail("filestack", f"unexpected answer to the probe: {exc}")


def probe_source(allowed: tuple[AllowedHost, ...]) -> str | None:
    """A URL that no asset has, under the first allow-listed host or prefix."""
    for entry in allowed:
        scheme = "http" if is_loopback(entry.host) else "https"
        port = "" if entry.port is None else f":{entry.port}"
        prefix = entry.path_prefix or "/"
        url = f"{scheme}://{entry.host}{port}{prefix}cms-sync-check-{uuid.uuid4().hex}.txt"
        if refusal_reason(url, allowed) is None:
            return url
    return None


# -- database ----------------------------------------------------------------------------
def _not_yet_created(path: Path) -> Check | None:
    """The verdict on a SQLite database that does not exist yet; None when it does."""
    if path.exists():
        return None
    parent = path.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return ok("database", f"{path} does not exist yet; serve will create it")
    return fail(
        "database", f"CMS_SYNC_DATABASE: cannot create {path}: {parent} is not a writable directory"
    )


async def _check_database(database: str | Path) -> Check:
    target = str(database)
    if not is_postgres(target) and "://" not in target:
        verdict = _not_yet_created(Path(target))
        if verdict is not None:
            return verdict
    try:
        async with open_storage(target, create=is_postgres(target)) as storage:
            await storage.jobs.check_writable(budget=WRITE_BUDGET)
    except (ConfigError, StoreUnavailable) as exc:
        return fail("database", f"{exc}")
    return ok("database", f"{shown_database(target)} can be written")
