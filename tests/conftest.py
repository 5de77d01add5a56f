from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cms_sync.settings import Settings
from pg import scratch_database
from wiring import make_settings

#: Environment variables cms-sync reads; cleared so a developer's shell cannot leak in.
_OUR_ENV = ("SANITY_", "FILESTACK_", "CMS_SYNC_")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(_OUR_ENV):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file from the checkout
    return


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL database of this test's own."""
    with scratch_database() as url:
        yield url


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
