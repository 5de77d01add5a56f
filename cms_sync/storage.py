"""The one way storage is opened: ``CMS_SYNC_DATABASE`` picks the backend.

A path is the embedded SQLite store (one process, one machine). A ``postgresql://`` URL
is the shared store for several replicas. Either way the caller gets the job store and
the stored-asset records, opened in the event loop that will use them, and closed when
the ``async with`` ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cms_sync.errors import ConfigError
from cms_sync.jobs import JobStore
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.records import AssetRecords

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Storage:
    jobs: JobStore
    records: AssetRecords


def is_postgres(database: str) -> bool:
    return database.startswith(_POSTGRES_SCHEMES)


def shown_database(database: str | Path) -> str:
    """How to name the database to a user: a path, or a URL without its password."""
    database = str(database)
    if not is_postgres(database):
        return database
    from cms_sync.jobstore.postgres import shown  # psycopg only where it is used

    return shown(database)


@asynccontextmanager
async def open_storage(
    database: str | Path, *, create: bool = True, ingest_timeout: float = 2.0
) -> AsyncIterator[Storage]:
    """Open the store ``database`` names (a path, or a ``postgresql://`` URL).

    Args:
        create: make the database (and its schema) if there is none; operator commands
            pass False, so that a mistyped path is an error, not an empty store.
        ingest_timeout: how long a delivery may wait to be written before it fails.

    Raises:
        ConfigError: the database cannot be opened as configured.
    """
    database = str(database)
    if is_postgres(database):
        # Imported here: psycopg takes a tenth of a second to import, which every
        # command on SQLite would otherwise pay.
        from cms_sync.jobstore.postgres import PostgresJobStore

        shared = await PostgresJobStore.open(database, create=create, ingest_timeout=ingest_timeout)
        try:
            yield Storage(jobs=shared, records=shared.records)
        finally:
            await shared.close()
        return
    if "://" in database:
        raise ConfigError(
            "CMS_SYNC_DATABASE: a path (SQLite) or a postgresql:// URL; "
            f"got a URL of another kind: {database.split('://', 1)[0]}://..."
        )
    store = await SQLiteJobStore.open(Path(database), create=create, ingest_timeout=ingest_timeout)
    try:
        yield Storage(jobs=store, records=store.records)
    finally:
        await store.close()
