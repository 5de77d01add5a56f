"""``open_storage``: CMS_SYNC_DATABASE picks the backend; what it cannot open is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cms_sync.errors import ConfigError
from cms_sync.jobs import JobRequest
from cms_sync.storage import open_storage

pytestmark = pytest.mark.anyio


async def test_a_path_is_a_sqlite_store_that_keeps_what_it_was_given(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db") as storage:
        await storage.jobs.accept("k", [JobRequest("post-1")], now=0)
    async with open_storage(str(tmp_path / "s.db"), create=False) as storage:
        assert (await storage.jobs.latest_job("post-1")) is not None


async def test_operator_commands_do_not_create_a_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no database at"):
        async with open_storage(tmp_path / "typo.db", create=False):
            pass
    assert not (tmp_path / "typo.db").exists()


async def test_a_url_of_another_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"a path \(SQLite\) or a postgresql:// URL"):
        async with open_storage("mysql://root@127.0.0.1/x"):
            pass
