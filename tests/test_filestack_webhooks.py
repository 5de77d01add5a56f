"""Filestack's notifications over real sockets: the emulator stores, loses answers and
notifies ``POST /webhooks/filestack`` of the service, as Filestack's webhooks would."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_world import World, running_world, wait_for

from cms_sync.emulators.filestack import Notifier
from cms_sync.jobs import JobState
from fakes import FakeContentLake
from scenarios import catalogue, converged

HOOK_SECRET = "fs-hook-secret"


@contextmanager
def notified_world(tmp_path: Path, docs: list[dict[str, Any]], **overrides: Any) -> Iterator[World]:
    lake = FakeContentLake(documents={d["_id"]: d for d in docs})
    with running_world(
        tmp_path / "jobs.db",
        lake=lake,
        filestack_webhook_secret=HOOK_SECRET,
        # an hour's backoff after a lost answer: only the notification can finish in time
        cms_sync_ambiguous_store_backoff=3600,
        **overrides,
    ) as world:
        world.fs.notifier = Notifier(f"{world.running.url}/webhooks/filestack", HOOK_SECRET)
        yield world


def lose_first(n: int) -> Callable[[httpx.Response], httpx.Response]:
    count = itertools.count()
    return lambda answer: httpx.Response(502, text="Bad Gateway") if next(count) < n else answer


def test_ten_lost_answers_converge_with_zero_extra_stores(tmp_path: Path) -> None:
    docs = catalogue(products=0, posts=10, shared=0)
    posts = [d for d in docs if d["_type"] == "post"]
    with notified_world(tmp_path, docs) as w:
        w.fs.lose_answer = lose_first(10)
        for post in posts:
            assert w.deliver(post).status_code == 202
        ids = [p["_id"] for p in posts]
        wait_for(lambda: converged(w.lake.documents, ids))
        assert w.fs.notifier is not None and w.fs.notifier.wait_idle()
        w.wait_idle()

        assert len(w.fs.stores) == 10  # one per asset: zero extra
        for post in posts:  # patched with the very file each lost answer had made
            slot = w.lake.documents[post["_id"]]["mainImage"]
            assert (
                w.fs.files[slot["filestackHandle"]].upload_tags["sanity_asset_id"]
                == (slot["asset"]["_ref"])
            )
        assert [n.outcome for n in w.fs.notifier.sent] == ["delivered"] * 10
        stats = w.running.call(lambda: w.running.service.store.stats(now=time.time()))
        assert stats.counts[JobState.FAILED] == 0 and stats.unanswered_stores == 0
        orphans = w.running.call(w.running.service.store.orphans)
        assert orphans == ([], [])


def signed(body: bytes, timestamp: int, secret: str = HOOK_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return {"fs-timestamp": str(timestamp), "fs-signature": digest.hexdigest()}


@pytest.mark.parametrize(
    "headers",
    [
        lambda body: signed(body, int(time.time()), secret="not-the-secret"),  # forged
        lambda body: signed(body, int(time.time()) - 3600),  # stale
        lambda body: {},  # unsigned
    ],
    ids=["forged", "stale", "unsigned"],
)
def test_a_forged_or_stale_notification_is_refused_and_leaves_no_trace(
    tmp_path: Path, headers: Callable[[bytes], dict[str, str]]
) -> None:
    docs = catalogue(products=0, posts=1, shared=0)
    with notified_world(tmp_path, docs) as w:
        w.fs.notifier = None  # this test speaks for Filestack
        w.fs.lose_answer = lose_first(1)
        post = next(d for d in docs if d["_type"] == "post")
        assert w.deliver(post).status_code == 202
        wait_for(lambda: len(w.fs.stores) == 1)
        w.wait_idle()
        body = stored_notice(w, 77)

        refused = w.http.post("/webhooks/filestack", content=body, headers=headers(body))

        assert refused.status_code == 401
        assert signed(body, int(time.time()))["fs-signature"] not in refused.text
        store = w.running.service.store
        asset = post["mainImage"]["asset"]["_ref"]
        assert w.running.call(lambda: store.records.get(asset)) is None
        assert not converged(w.lake.documents, [post["_id"]])
        # no trace: the same notification, signed, is news (not a duplicate)
        genuine = w.http.post(
            "/webhooks/filestack", content=body, headers=signed(body, int(time.time()))
        )
        assert genuine.json() == {
            "status": "recorded",
            "asset_id": asset,
            "queued": [post["_id"]],
        }
        wait_for(lambda: converged(w.lake.documents, [post["_id"]]))
        assert len(w.fs.stores) == 1
        again = w.http.post(
            "/webhooks/filestack", content=body, headers=signed(body, int(time.time()))
        )
        assert again.json()["status"] == "duplicate"


def test_notifications_that_are_not_ours_get_200_with_a_reason(tmp_path: Path) -> None:
    with notified_world(tmp_path, catalogue(products=0, posts=1, shared=0)) as w:
        for message, reason in [
            ({"id": 1, "action": "fp.delete", "text": {"url": "https://x/y"}}, "not a store"),
            (
                {"id": 2, "action": "fp.upload", "text": {"url": "https://cdn.x/AAAA"}},
                "no sanity_asset_id upload tag",
            ),
        ]:
            body = json.dumps(message).encode()
            answer = w.http.post(
                "/webhooks/filestack", content=body, headers=signed(body, int(time.time()))
            )
            assert answer.status_code == 200
            assert answer.json()["status"] == "ignored" and reason in answer.json()["reason"]
        malformed = w.http.post(
            "/webhooks/filestack", content=b"nope", headers=signed(b"nope", int(time.time()))
        )
        assert malformed.status_code == 400


def test_without_a_secret_the_endpoint_is_not_there(tmp_path: Path) -> None:
    with running_world(tmp_path / "jobs.db") as w:
        answer = w.http.post("/webhooks/filestack", content=b"{}")
        assert answer.status_code == 404 and "FILESTACK_WEBHOOK_SECRET" in answer.text


def stored_notice(w: World, event_id: int) -> bytes:
    """The notification Filestack would send for the emulator's one stored file."""
    (stored,) = w.fs.files.values()
    return json.dumps(
        {
            "id": event_id,
            "action": "fp.upload",
            "timestamp": int(time.time()),
            "text": {
                "url": f"https://cdn.filestackcontent.com/{stored.handle}",
                "key": stored.key,
                "size": len(stored.data),
                "type": stored.mime,
                "upload_tags": stored.upload_tags,
            },
        }
    ).encode()


def test_an_oversized_notification_is_413_and_read_no_further(tmp_path: Path) -> None:
    with running_world(
        tmp_path / "jobs.db", filestack_webhook_secret=HOOK_SECRET, cms_sync_webhook_max_body=1024
    ) as w:
        big = json.dumps({"id": 1, "action": "fp.upload", "pad": "x" * 2000}).encode()
        headers = signed(big, int(time.time()))
        assert w.http.post("/webhooks/filestack", content=big, headers=headers).status_code == 413

        def chunks() -> Iterator[bytes]:  # no content-length: counted while reading
            yield big[:1000]
            yield big[1000:]

        chunked = w.http.post("/webhooks/filestack", content=chunks(), headers=headers)
        assert chunked.status_code == 413
        metrics = w.http.get("/metrics").text
        assert 'cms_sync_filestack_notices_total{outcome="too_large"} 2.0' in metrics


def test_a_store_that_cannot_be_written_is_503_and_filestacks_retry_lands(
    tmp_path: Path,
) -> None:
    docs = catalogue(products=0, posts=1, shared=0)
    post = next(d for d in docs if d["_type"] == "post")
    database = tmp_path / "jobs.db"
    with notified_world(tmp_path, docs, cms_sync_ingest_timeout=0.5) as w:
        w.fs.notifier = None  # this test speaks for Filestack
        w.fs.lose_answer = lose_first(1)
        assert w.deliver(post).status_code == 202
        wait_for(lambda: len(w.fs.stores) == 1)
        w.wait_idle()
        body = stored_notice(w, 78)
        holder = sqlite3.connect(database, isolation_level=None)  # another process, say
        holder.execute("BEGIN IMMEDIATE")
        try:
            refused = w.http.post(
                "/webhooks/filestack", content=body, headers=signed(body, int(time.time()))
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert refused.status_code == 503 and "retry" in refused.json()["error"]
        # Filestack retries the same notification; nothing of the refused one was kept
        retried = w.http.post(
            "/webhooks/filestack", content=body, headers=signed(body, int(time.time()))
        )
        assert retried.json()["status"] == "recorded"
        wait_for(lambda: converged(w.lake.documents, [post["_id"]]))
        assert len(w.fs.stores) == 1
