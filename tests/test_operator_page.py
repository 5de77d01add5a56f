"""``/operator`` over real sockets: login, the session cookie, CSRF, the security headers,
a failure made by a Filestack fault, and replay; on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_world import World, running_world, wait_for

from cms_sync.filestack_notices import StoreNotice
from cms_sync.jobs import Confirmed, JobRequest, JobSource, JobState
from cms_sync.operator.auth import COOKIE

TOKEN = "operator-token-0123456789abcdef"
STUDIO = "https://acme.sanity.studio"


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    database: Any = tmp_path / "jobs.db"
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_url")
    with running_world(
        database,
        cms_sync_operator_token=TOKEN,
        cms_sync_operator_secure_cookie=False,  # plain HTTP on 127.0.0.1
        sanity_studio_url=STUDIO,
    ) as world:
        yield world


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def log_in(http: httpx.Client, token: str = TOKEN) -> httpx.Response:
    form = http.get("/operator/login")
    return http.post("/operator/login", data={"csrf": csrf_of(form.text), "token": token})


def test_without_a_token_there_is_no_page(tmp_path: Path) -> None:
    with running_world(tmp_path / "jobs.db") as w:
        assert w.http.get("/operator/").status_code == 404
        assert w.http.get("/operator/login").status_code == 404


def test_every_page_asks_for_a_login_first_and_carries_a_strict_policy(world: World) -> None:
    http = world.http
    first = http.get("/operator/")
    assert first.status_code == 303 and first.headers["location"] == "/operator/login"
    assert http.get("/operator/failures").headers["location"] == "/operator/login"
    refused = http.post("/operator/replay", data={"document_id": "post-1"})
    assert refused.status_code == 401

    login = http.get("/operator/login")
    policy = login.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
    assert login.headers["x-frame-options"] == "DENY"
    assert login.headers["cache-control"] == "no-store"
    assert "<script>" not in login.text and " style=" not in login.text  # nothing inline
    script = http.get("/operator/static/operator.js")
    assert script.status_code == 200 and "replay" in script.text


def test_a_login_gives_a_strict_cookie_that_holds_no_secret(tmp_path: Path) -> None:
    with running_world(tmp_path / "jobs.db", cms_sync_operator_token=TOKEN) as w:
        # The cookie is Secure, so httpx keeps it from plain HTTP: carry it by hand.
        form = w.http.get("/operator/login")
        pre = form.headers["set-cookie"].split(";")[0]
        answer = w.http.post(
            "/operator/login",
            data={"csrf": csrf_of(form.text), "token": TOKEN},
            headers={"cookie": pre},
        )
    assert answer.status_code == 303 and answer.headers["location"] == "/operator/"
    (cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE)]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite"} <= flags
    assert "samesite=strict" in cookie.lower() and "path=/operator" in cookie.lower()
    assert TOKEN not in cookie


def test_a_wrong_token_is_refused_and_failed_logins_are_limited(world: World) -> None:
    for _ in range(5):
        wrong = log_in(world.http, "not-the-operator-token-at-all")
        assert wrong.status_code == 401 and "That is not the token" in wrong.text
        assert TOKEN not in wrong.text
    limited = log_in(world.http)  # even the right token, past the limit
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert world.http.get("/operator/").status_code == 303  # still not logged in


def test_a_login_post_without_its_csrf_token_is_refused(world: World) -> None:
    world.http.get("/operator/login")
    answer = world.http.post("/operator/login", data={"token": TOKEN})
    assert answer.status_code == 403
    assert world.http.get("/operator/").status_code == 303


def test_a_failure_appears_with_its_reason_and_replay_fixes_it(world: World) -> None:
    lake, fs = world.lake, world.fs
    post = lake.documents["post-1"]
    fs.refuse.add(lake.documents[post["mainImage"]["asset"]["_ref"]]["url"])
    assert world.deliver(post).status_code == 202
    wait_for(lambda: world.jobs(JobState.FAILED) == 1)
    assert log_in(world.http).status_code == 303

    page = world.http.get("/operator/failures")
    assert page.status_code == 200
    assert "post-1" in page.text and "Invalid URL" in page.text
    assert f"{STUDIO}/intent/edit/id=post-1" in page.text
    assert "fs-secret" not in page.text and "whsec" not in page.text
    overview = world.http.get("/operator/")
    assert re.search(r'<span class="n">1</span> failed', overview.text)

    # a POST without the session's CSRF token changes nothing
    forged = world.http.post("/operator/replay", data={"document_id": "post-1"})
    assert forged.status_code == 403 and world.jobs(JobState.FAILED) == 1
    wrong = world.http.post("/operator/replay", data={"document_id": "post-1", "csrf": "x" * 43})
    assert wrong.status_code == 403 and world.jobs(JobState.FAILED) == 1

    fs.refuse.clear()  # the cause is fixed
    replayed = world.http.post(
        "/operator/replay", data={"document_id": "post-1", "csrf": csrf_of(page.text)}
    )
    assert replayed.status_code == 303 and replayed.headers["location"] == "/operator/failures"
    wait_for(lambda: lake.documents["post-1"]["mainImage"].get("filestackHandle") is not None)
    after = world.http.get("/operator/failures")
    assert "Queued 1: post-1." in after.text and "No failed documents." in after.text


def test_replay_answers_json_to_the_page_script_and_refuses_drafts(world: World) -> None:
    page = log_in(world.http)
    csrf = csrf_of(world.http.get(page.headers["location"]).text)
    answer = world.http.post(
        "/operator/replay",
        data={"document_id": ["post-1", "drafts.post-2"]},
        headers={"accept": "application/json", "x-csrf-token": csrf},
    )
    assert answer.status_code == 400
    assert answer.json()["queued"] == ["post-1"]
    assert "drafts" in answer.json()["refused"]["drafts.post-2"]


def test_logout_ends_the_session(world: World) -> None:
    log_in(world.http)
    page = world.http.get("/operator/")
    assert page.status_code == 200
    out = world.http.post("/operator/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert world.http.get("/operator/").status_code == 303


def test_a_huge_form_is_refused_before_it_is_read(world: World) -> None:
    log_in(world.http)
    answer = world.http.post(
        "/operator/replay",
        content=b"document_id=" + b"x" * 200_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413


def test_the_document_view_shows_its_runs_slots_thumbnails_and_state(world: World) -> None:
    lake, fs = world.lake, world.fs
    post = lake.documents["post-1"]
    fs.refuse.add(lake.documents[post["mainImage"]["asset"]["_ref"]]["url"])
    world.deliver(post)
    wait_for(lambda: world.jobs(JobState.FAILED) == 1)
    log_in(world.http)

    failed = world.http.get("/operator/documents/post-1")
    assert failed.status_code == 200
    history = failed.text.split("Job history", 1)[1]
    assert 'class="state run-failed">failed' in history and "Invalid URL" in history
    assert re.search(r'data-slot="mainImage">.*?slot-to-store">to store<', failed.text, re.S)
    assert 'class="state state-failed">failed' in failed.text  # the latest job

    fs.refuse.clear()
    csrf = csrf_of(failed.text)
    world.http.post("/operator/replay", data={"document_id": "post-1", "csrf": csrf})
    wait_for(lambda: lake.documents["post-1"]["mainImage"].get("filestackHandle") is not None)
    wait_for(lambda: world.jobs(JobState.DONE) == 1)
    handle = lake.documents["post-1"]["mainImage"]["filestackHandle"]

    synced = world.http.get("/operator/documents/post-1").text
    assert re.search(r'data-slot="mainImage">.*?slot-in-sync">in sync<', synced, re.S)
    runs = re.findall(r'class="state run-(\w+)"', synced.split("Job history", 1)[1])
    assert runs == ["done", "failed"]  # newest first
    assert "replay" in synced.split("Job history", 1)[1]
    # the thumbnail is a Filestack transformation of the stored file, on its own host
    (thumb,) = re.findall(r'<img class="thumb" src="([^"]+)"', synced)
    assert thumb.endswith(f"/resize=width:160/{handle}")
    origin = thumb.split("/resize=")[0]
    assert origin in world.http.get("/operator/").headers["content-security-policy"]
    assert "fs-secret" not in synced and "whsec" not in synced


def test_a_document_that_cannot_be_read_still_shows_its_history(world: World) -> None:
    log_in(world.http)
    missing = world.http.get("/operator/documents/post-404")
    assert missing.status_code == 200
    assert "Cannot read the document from Sanity" in missing.text and "post-404" in missing.text
    assert "No runs recorded." in missing.text

    found = world.http.get("/operator/documents", params={"id": " post-1 "})
    assert found.status_code == 303 and found.headers["location"] == "/operator/documents/post-1"
    bad = world.http.get("/operator/documents", params={"id": "a/../b c"})
    assert bad.status_code == 400 and "is not a document id" in bad.text


def test_the_overview_lists_recent_documents_throughput_and_error_rates(world: World) -> None:
    lake, fs = world.lake, world.fs
    for doc_id in ("post-1", "product-1"):
        world.deliver(lake.documents[doc_id])
    wait_for(lambda: world.jobs(JobState.DONE) == 2)
    post2 = lake.documents["post-legacy"]
    fs.refuse.add(lake.documents[post2["mainImage"]["asset"]["_ref"]]["url"])
    world.deliver(post2)
    wait_for(lambda: world.jobs(JobState.FAILED) == 1)
    log_in(world.http)

    page = world.http.get("/operator/").text
    recent = re.findall(r'<tr data-document="([^"]+)">\s*<td><a href="/operator/documents/', page)
    assert recent[0] == "post-legacy" and set(recent) == {"post-1", "product-1", "post-legacy"}
    # the chart: one bar per outcome in the minute they ran, nothing inline but SVG
    bars = re.findall(r'<rect class="run-(\w+)"[^>]*><title>(\d+) \w+, (\d+) min ago', page)
    done = sum(int(n) for outcome, n, _ in bars if outcome == "done")
    assert done == 2 and sum(int(n) for o, n, _ in bars if o == "failed") == 1
    assert {minutes for *_, minutes in bars} <= {"0", "1"}
    assert "done 2" in page and "failed 1" in page
    # this process's calls: Filestack refused one store (a 400)
    filestack = re.search(r'<tr data-remote="filestack">(.*?)</tr>', page, re.S)
    assert filestack is not None
    calls, errors = (int(n) for n in re.findall(r'class="num[^"]*">(\d+)<', filestack[1])[:2])
    assert errors == 1 and calls >= 2
    sanity = re.search(r'<tr data-remote="sanity">(.*?)</tr>', page, re.S)
    assert sanity is not None and "0.0%" in sanity[1]


def test_the_backfill_page_shows_a_runs_progress_rate_and_eta(world: World) -> None:
    log_in(world.http)
    assert "No backfill has run" in world.http.get("/operator/backfill").text
    store, now = world.running.service.store, time.time()
    requests = [JobRequest(d, source=JobSource.BACKFILL) for d in ("post-1", "product-1")]
    world.running.call(lambda: store.begin_backfill("needed:post,product", total=10, now=now))
    world.running.call(
        lambda: store.advance_backfill("needed:post,product", requests, cursor="product-1", now=now)
    )
    world.running.service.worker.wake()
    wait_for(lambda: world.jobs(JobState.DONE) == 2)

    page = world.http.get("/operator/backfill").text
    row = re.search(r'<tr data-run="needed:post,product">(.*?)</tr>', page, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    assert cells[2:6] == ["2/10", "2", "0", "0"]  # swept, done, failed, queued
    assert cells[6].endswith("docs/s") and float(cells[6].split()[0]) > 0
    assert cells[8] == "sweeping" and cells[7] not in ("-", "")  # an ETA for the 8 left
    overview = world.http.get("/operator/").text
    assert "needed:post,product" in overview and "swept 2/10" in overview


def test_an_orphan_of_a_documents_asset_shows_on_its_view_and_the_overview(world: World) -> None:
    lake = world.lake
    world.deliver(lake.documents["post-1"])
    wait_for(lambda: world.jobs(JobState.DONE) == 1)
    asset_id = lake.documents["post-1"]["mainImage"]["asset"]["_ref"]
    notice = StoreNotice(
        event_id="evt-1",
        action="fp.upload",
        asset_id=asset_id,
        handle="OrphanHandle00000001",
        url="https://cdn.filestackcontent.com/OrphanHandle00000001",
        storage_key=f"sanity/{asset_id}.jpg",
        size=10,
        mime_type="image/jpeg",
        store_number=None,
        document_id="post-1",
        timestamp=None,
    )
    store = world.running.service.store
    confirmed = world.running.call(lambda: store.confirm_store(notice, now=time.time()))
    assert confirmed.outcome is Confirmed.ORPHAN
    log_in(world.http)
    for path in ("/operator/documents/post-1", "/operator/"):
        page = world.http.get(path).text
        row = re.search(r'<table class="orphans">.*?</table>', page, re.S)
        assert row is not None and "OrphanHandle00000001" in row[0] and asset_id in row[0]
    other = world.http.get("/operator/documents/product-1").text
    assert "OrphanHandle00000001" not in other
