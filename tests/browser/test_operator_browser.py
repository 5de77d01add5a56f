"""The operator page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): log in, see a failure a Filestack fault made, press replay and see the
document synced, and a POST without the CSRF token refused.

Chromium is installed by ``.ci/run`` where it is missing; under CI (``CI`` set) a missing
browser fails these tests rather than skipping them. ``OPERATOR_SCREENSHOTS=<dir>`` saves
a screenshot of each page there (``docs/screenshots/`` holds the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from service_world import World, running_world, wait_for

from cms_sync.jobs import JobState

TOKEN = "operator-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: As the machine's own probe starts it: no sandbox (root), nothing fetched from the net.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = os.environ.get("OPERATOR_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    database: object = tmp_path / "jobs.db"
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_url")
    with running_world(
        database,
        cms_sync_operator_token=TOKEN,
        cms_sync_operator_secure_cookie=False,
        sanity_studio_url="https://acme.sanity.studio",
    ) as world:
        yield world


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def test_log_in_see_a_failure_replay_it_and_see_it_synced(browser: Browser, world: World) -> None:
    lake, fs = world.lake, world.fs
    post = lake.documents["post-1"]
    fs.refuse.add(lake.documents[post["mainImage"]["asset"]["_ref"]]["url"])
    assert world.deliver(post).status_code == 202
    assert world.deliver(lake.documents["product-1"]).status_code == 202
    wait_for(lambda: world.jobs(JobState.FAILED) == 1)

    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{world.running.url}/operator/")
    assert page.url.endswith("/operator/login")
    shot(page, "login")
    page.fill("#token", "wrong-token-wrong-token-wrong")
    page.click("button[type=submit]")
    assert "That is not the token" in page.inner_text("main")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/operator/")
    assert page.inner_text(".tile.state-failed .n") == "1"
    shot(page, "overview")

    page.click("nav >> text=Failures")
    row = page.locator("tr[data-document='post-1']")
    assert "Invalid URL" in row.inner_text()
    shot(page, "failures")

    fs.refuse.clear()  # the cause is fixed; the button, sent by operator.js, replays it
    row.locator("button", has_text="Replay").click()
    row.locator("button", has_text="Queued").wait_for()
    wait_for(lambda: lake.documents["post-1"]["mainImage"].get("filestackHandle") is not None)
    wait_for(lambda: world.jobs(JobState.FAILED) == 0)
    page.reload()
    assert "No failed documents." in page.inner_text("main")

    # a POST from the page's own origin, with its cookie but without the CSRF token
    status = page.evaluate(
        """async () => (await fetch('/operator/replay', {method: 'POST',
             headers: {'content-type': 'application/x-www-form-urlencoded'},
             body: 'document_id=post-1'})).status"""
    )
    assert status == 403
    # nothing on the page broke the CSP (its violations are console errors)
    assert not [e for e in errors if "Content Security Policy" in e or "Refused to" in e], errors
    context.close()
