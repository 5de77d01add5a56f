from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from leaks import shown_secrets

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or report.failed:
        return
    leaked = shown_secrets("\n".join(text for _, text in report.sections))
    if leaked:
        report.outcome = "failed"
        report.longrepr = f"captured output shows a configured secret: {', '.join(leaked)}"
