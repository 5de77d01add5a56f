"""Scratch PostgreSQL databases for tests: one per test, created and dropped by it.

``CMS_SYNC_TEST_POSTGRES`` names the server (read at import: the tests clear cms-sync's
variables). Under CI (``CI`` set) an unreachable server fails the test instead of
skipping it, so a broken machine cannot pass by running nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest

SERVER = os.environ.get("CMS_SYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = bool(os.environ.get("CI"))


def database_url(name: str) -> str:
    """The server's URL with database ``name`` (a URL, as CMS_SYNC_DATABASE takes)."""
    return urlsplit(SERVER)._replace(path=f"/{name}").geturl()


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {SERVER} is unreachable: {exc}".strip()
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def scratch_database(prefix: str = "cms_sync_test") -> Iterator[str]:
    """A new empty database on the test server; its URL; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield database_url(name)
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
