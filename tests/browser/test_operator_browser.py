"""The operator page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): log in, see a failure a Filestack fault made, press replay and see the
document synced, and a POST without the CSRF token refused.

Chromium is installed by ``.ci/run`` where it is missing; under CI (``CI`` set) a missing
browser fails these tests rather than skipping them. ``OPERATOR_SCREENSHOTS=<dir>`` saves
a screenshot of each page there (``docs/screenshots/`` holds the README's: the login from
the first test, the rest from the demo's).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from process import DemoProcess, cms_sync
from service_world import World, running_world, wait_for

from cms_sync.demo import catalogue, data_file
from cms_sync.emulators.filestack import REFUSE_PATH
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
IMAGE = "mainImage.asset._ref"


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
    # the answer is a new page at the same address: wait for its text, not for a URL
    page.locator("main", has_text="That is not the token").wait_for()
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/operator/")
    assert page.inner_text(".tile.state-failed .n") == "1"

    page.click("nav >> text=Failures")
    page.wait_for_url("**/operator/failures")
    row = page.locator("tr[data-document='post-1']")
    assert "Invalid URL" in row.inner_text()

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


@pytest.fixture(params=["sqlite", "postgres"])
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DemoProcess]:
    database = str(tmp_path / "demo.db")
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_url")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANITY_", "FILESTACK_"))}
    process = DemoProcess(env, tmp_path, database=database)
    try:
        process.wait_for_line(lambda line: line.startswith("Still running"), timeout=90)
        yield process
    finally:
        process.close()


def test_the_demo_on_the_page_a_failure_injected_into_the_emulator_and_its_replay(
    browser: Browser, demo: DemoProcess
) -> None:
    """The acceptance: ``cms-sync demo --keep-running``; the page shows the demo's
    documents; a failure injected into the Filestack emulator appears, and Replay fixes it."""
    page_line = demo.wait_for_line(lambda line: "Operator page" in line)
    match = re.search(r"Operator page\s+(\S+)\s+\(token: (\S+)\)", page_line)
    assert match, page_line
    operator_url, token = match[1], match[2]
    sanity = demo.setting("SANITY_API_HOST")
    dataset = demo.setting("SANITY_DATASET")
    filestack = demo.setting("FILESTACK_PROCESS_URL").removesuffix("/process")
    lake = httpx.Client(
        base_url=sanity,
        headers={"authorization": f"Bearer {demo.setting('SANITY_WRITE_TOKEN')}"},
        timeout=10,
    )
    backfill_env = {**os.environ, **demo.worker_env(), "CMS_SYNC_DATABASE": demo.database}
    with lake, browser.new_context(viewport={"width": 1200, "height": 900}) as context:
        page = context.new_page()
        walk_through(page, lake, operator_url, token, dataset, filestack, backfill_env)


def walk_through(
    page: Page,
    lake: httpx.Client,
    operator_url: str,
    token: str,
    dataset: str,
    filestack: str,
    backfill_env: dict[str, str],
) -> None:

    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(operator_url)
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/operator/")
    shown = set(
        page.locator("table.documents tr[data-document]").evaluate_all(
            "rows => rows.map(r => r.dataset.document)"
        )
    )
    demo_ids = {doc["_id"] for doc in catalogue()["documents"]}
    assert demo_ids <= shown, shown
    assert page.locator("table.documents .state-failed").count() == 0
    assert page.locator(".chart rect.run-done").count() >= 1
    shot(page, "overview")

    # An editor gives a post a new image while Filestack cannot fetch it.
    upload = lake.post(
        f"/v2021-06-07/assets/images/{dataset}",
        params={"filename": "new-cover.png"},
        # a demo picture with bytes after its end: a new asset (new SHA-1), the same image
        content=data_file("lamp-lit.png") + b"\n(cms-sync browser test)",
        headers={"content-type": "image/png"},
    )
    asset = upload.raise_for_status().json()["document"]
    refused = httpx.put(f"{filestack}{REFUSE_PATH}", json={"sources": [asset["url"]]})
    assert refused.status_code == 200
    patched = lake.post(
        f"/v2025-02-19/data/mutate/{dataset}",
        json={"mutations": [{"patch": {"id": "post-launch", "set": {IMAGE: asset["_id"]}}}]},
    )
    patched.raise_for_status()

    page.click("nav >> text=Failures")
    page.wait_for_url("**/operator/failures")
    row = page.locator("tr[data-document='post-launch']")
    reload_until(page, lambda: row.count() == 1)
    assert "Invalid URL" in row.inner_text()
    shot(page, "failures")

    row.locator("a", has_text="post-launch").click()
    page.wait_for_url("**/operator/documents/post-launch")
    slot = page.locator("tr[data-slot='mainImage']")
    assert slot.locator(".slot-state").inner_text() == "to store"
    assert "failed" in page.locator("table.history").inner_text()

    # The cause is fixed; Replay (sent by operator.js, no reload) runs it again.
    assert httpx.put(f"{filestack}{REFUSE_PATH}", json={"sources": []}).status_code == 200
    page.locator("section.summary button", has_text="Replay").click()
    page.locator("section.summary button", has_text="Queued").wait_for()
    reload_until(page, lambda: slot.locator(".slot-state").inner_text() == "in sync")
    thumb = slot.locator("img.thumb")
    thumb.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    assert thumb.evaluate("img => img.naturalWidth") == 96  # the emulator serves the upload
    outcomes = page.locator("table.history .state").all_inner_texts()
    # newest first: the replay's run (and any run the worker's own patch set off), then
    # the failure
    assert outcomes[0] == "done" and "failed" in outcomes, outcomes
    shot(page, "document")
    document = lake.get(f"/v2025-02-19/data/doc/{dataset}/post-launch").json()["documents"][0]
    assert document["mainImage"]["filestackSourceAsset"] == asset["_id"]

    page.click("nav >> text=Failures")
    # a click waits for the navigation to start, not for the new page: wait for its address
    page.wait_for_url("**/operator/failures")
    assert "No failed documents." in page.inner_text("main")

    # A backfill of every document, queued by the CLI and run by the demo's service.
    swept = cms_sync("backfill", "--all", env=backfill_env, cwd=Path.cwd(), timeout=90)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    page.click("nav >> text=Backfill")
    page.wait_for_url("**/operator/backfill")
    # The CLI has swept; the service's worker may still be running the jobs it queued.
    run = page.locator("table.backfills tr[data-run]").first
    done = f"{len(demo_ids)}/{len(demo_ids)}"
    reload_until(page, lambda: run.count() == 1 and run.locator("td").nth(2).inner_text() == done)
    cells = run.locator("td").all_inner_texts()
    assert cells[2] == done and cells[4] == "0", cells
    assert cells[8].startswith("swept "), cells
    shot(page, "backfill")
    assert not [e for e in errors if "Content Security Policy" in e or "Refused to" in e], errors


def reload_until(page: Page, condition: Callable[[], bool], timeout: float = 30) -> None:
    """Reload until ``condition`` holds (the page shows the store as of each load)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the page"
        page.wait_for_timeout(200)
        page.reload()
