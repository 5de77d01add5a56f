"""Acceptance of the webhook service, run as ``cms-sync serve`` processes against both fakes.

The service is an external process here, so where a test waits for it to finish work it
polls the job store and the fakes with a deadline: there is no event to inject into
another process.
"""

from __future__ import annotations

import json
import queue
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from process import ServeProcess, cms_sync

from cms_sync import signature
from cms_sync.emulators.filestack import Notifier
from fakes import GRANTED_STORES_SQL, FakeContentLake, FakeFilestack
from scenarios import asset, catalogue, image, slots
from senders import SECRET, Deliveries, mixed_deliveries
from servers import serve
from wiring import crash_test_env

TOKEN = "sk-test-token"


def fifty_documents() -> list[dict[str, Any]]:
    """25 products (main image + a 2-image gallery from a pool of 6) and 25 posts."""
    return catalogue(products=25, posts=25, shared=6)


HOOK_SECRET = "fs-hook-secret"


@dataclass
class Service:
    lake: FakeContentLake
    fs: FakeFilestack
    env: dict[str, str]
    cwd: Path
    echoes: queue.Queue[dict[str, Any]]
    procs: list[ServeProcess] = field(default_factory=list)
    #: Queue Sanity's update webhook for each patch (a test that sets this must send them).
    echo: bool = False

    clients: list[Deliveries] = field(default_factory=list)

    def deliveries(self, url: str) -> Deliveries:
        client = Deliveries(url)
        self.clients.append(client)
        return client

    def start(self) -> ServeProcess:
        proc = ServeProcess(self.env, self.cwd)
        self.procs.append(proc)
        return proc

    def jobs(self) -> dict[str, int]:
        with sqlite3.connect(self.cwd / "cms-sync.db") as conn:
            return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())

    def quiet(self) -> bool:
        jobs = self.jobs()
        return self.echoes.empty() and not jobs.get("pending") and not jobs.get("running")

    def wait(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; jobs: {self.jobs()}"
            time.sleep(0.05)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    lake = FakeContentLake(documents={d["_id"]: d for d in fifty_documents()}, token=TOKEN)
    fs = FakeFilestack()
    echoes: queue.Queue[dict[str, Any]] = queue.Queue()
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = crash_test_env(
            sanity_url,
            filestack_url,
            SANITY_WEBHOOK_SECRET=SECRET,
            FILESTACK_WEBHOOK_SECRET=HOOK_SECRET,
        )
        svc = Service(lake, fs, env, tmp_path, echoes)

        def on_commit(docs: list[dict[str, Any]]) -> None:
            for doc in docs if svc.echo else ():
                echoes.put(doc)

        lake.on_commit = on_commit
        try:
            yield svc
        finally:
            for proc in svc.procs:
                proc.close()
            for client in svc.clients:
                client.http.close()


def echo_sender(svc: Service, d: Deliveries, url: Callable[[], str], stop: threading.Event) -> None:
    """Post Sanity's update webhook for every committed patch, like the real Content Lake."""
    while not stop.is_set():
        try:
            doc = svc.echoes.get(timeout=0.05)
        except queue.Empty:
            continue
        status = d.post(d.groq(doc["_id"], doc["_type"]), url())
        assert status in (200, 202)
        svc.echoes.task_done()


def granted_stores(database: Path) -> set[str]:
    """The assets whose store the ledger granted and saw no answer to (a crash's in-flight)."""
    with closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(GRANTED_STORES_SQL).fetchall()
    return {asset_id for (asset_id,) in rows}


def test_two_hundred_deliveries_with_a_kill_9_in_the_middle(service: Service) -> None:
    svc, lake, fs = service, service.lake, service.fs
    svc.echo = True
    doc_ids = [i for i, d in lake.documents.items() if d["_type"] in ("product", "post")]
    distinct_assets = {s["asset"]["_ref"] for i in doc_ids for s in slots(lake.documents[i])}
    rng = random.Random(2026)

    first = svc.start()
    d = svc.deliveries(first.url)
    current = {"url": first.url}
    stop = threading.Event()
    sender = threading.Thread(
        target=echo_sender,
        args=(svc, svc.deliveries(first.url), lambda: current["url"], stop),
        daemon=True,
    )

    # Filestack's notifications of the stores are delayed until the end (phase 4).
    fs.notifier = Notifier("http://127.0.0.1:9/not-yet", HOOK_SECRET, released=threading.Event())

    # Phase 1: Filestack holds every store; deliveries are acknowledged meanwhile.
    fs.gate = threading.Event()
    messages = mixed_deliveries(d, doc_ids, rng)  # 50 + 15 + 10 + 25 = 100
    assert len(messages) == 100
    half = messages[:60]
    assert all(d.post(m) in (200, 202) for m in half)
    assert fs.arrived.wait(30)
    first.kill()  # kill -9 while stores are in flight and jobs are leased
    granted = granted_stores(svc.cwd / "cms-sync.db")
    granted_urls = {lake.documents[a]["url"] for a in granted}
    in_flight_at_kill = fs.held_after_kill(granted_urls)
    fs.gate.set()  # Filestack finishes those stores for a process that is gone
    assert in_flight_at_kill
    assert in_flight_at_kill <= granted_urls

    # Phase 2: restart on the same database; Sanity redelivers what was never acknowledged
    # (the other 40), repeats some that were (20), and new publishes keep coming (80).
    second = svc.start()
    current["url"] = d.url = second.url
    sender.start()
    rest = messages[60:] + rng.sample(half, 20)
    more = [d.groq(i, i.split("-")[0]) for i in rng.choices(doc_ids, k=65)]
    more += [d.legacy(*rng.sample(doc_ids, 4)) for _ in range(15)]
    rng.shuffle(more)
    assert all(d.post(m) in (200, 202) for m in rest + more)
    svc.wait(
        lambda: (
            svc.quiet()
            and all(
                s.get("filestackSourceAsset") == s["asset"]["_ref"]
                for i in doc_ids
                for s in slots(lake.documents[i])
            )
        )
    )
    assert d.sent == 200

    # Phase 3: a content change on 10 documents, each delivered twice.
    changed = rng.sample([i for i in doc_ids if i.startswith("post")], 10)
    for doc_id in changed:
        new = asset(f"{doc_id}-v2")
        lake.add(new)
        lake.edit(doc_id, lambda doc, new=new: doc.update(mainImage=image(new)))
        message = d.groq(doc_id, "post")
        assert d.post(message) == 202 and d.post(message) == 200
    svc.wait(
        lambda: (
            svc.quiet()
            and all(
                lake.documents[i]["mainImage"].get("filestackSourceAsset")
                == lake.documents[i]["mainImage"]["asset"]["_ref"]
                for i in changed
            )
        )
    )
    stop.set()
    sender.join(timeout=10)

    # Every slot carries the four fields from its store; every document was patched once per
    # content change (the echoes of our own patches changed nothing), except that a document
    # using an asset whose store the kill cut off (granted in the ledger, whether or not its
    # request got out) may be patched twice: its other slots at once, that slot once the
    # ledger's hold on the asset ran out.
    for doc_id in doc_ids:
        for slot in slots(lake.documents[doc_id]):
            assert slot["filestackSourceAsset"] == slot["asset"]["_ref"]
            assert all(
                slot[f] is not None
                for f in ("filestackHandle", "filestackUrl", "filestackSize", "filestackMimeType")
            )
    held = {
        i for i in doc_ids if any(s["asset"]["_ref"] in granted for s in slots(lake.documents[i]))
    }
    patches = Counter(p["patch"]["id"] for m in lake.commits for p in m)
    for doc_id in doc_ids:
        expected = 2 if doc_id in changed else 1
        if doc_id in held and doc_id not in changed:
            assert patches[doc_id] in (1, 2), doc_id
        else:
            assert patches[doc_id] == expected, doc_id

    # One store per distinct asset, except the stores the kill cut off mid-request: those
    # files reached Filestack but their handles died with the process, so they are stored
    # again (a store is not idempotent). Nothing else is stored twice.
    stores = Counter(body["sources"][0] for body in fs.stores)
    urls = {lake.documents[a]["url"] for a in distinct_assets} | {
        lake.documents[lake.documents[i]["mainImage"]["asset"]["_ref"]]["url"] for i in changed
    }
    assert set(stores) == urls
    assert {u for u, n in stores.items() if n > 1} == set(in_flight_at_kill)
    assert max(stores.values()) == 2

    jobs = svc.jobs()
    assert not jobs.get("pending") and not jobs.get("running") and not jobs.get("failed")

    # Phase 4: Filestack's delayed notifications arrive. The first store of each asset the
    # kill cut off made a file whose handle died with the process: exactly those are orphans.
    first_handle: dict[str, str] = {}
    for body, made in zip(fs.stores, fs.files.values(), strict=True):
        first_handle.setdefault(body["sources"][0], made.handle)
    fs.notifier.url = f"{second.url}/webhooks/filestack"
    fs.notifier.released.set()
    assert fs.notifier.wait_idle(60)
    assert {n.outcome for n in fs.notifier.sent} == {"delivered"}
    listed = json.loads(cms_sync("orphans", "--json", env=svc.env, cwd=svc.cwd).stdout)
    assert {o["handle"] for o in listed["orphans"]} == {first_handle[u] for u in in_flight_at_kill}
    assert all("crashed mid-store" in o["reason"] for o in listed["orphans"])
    assert listed["unseen_copies"] == []  # every possible copy is named
    text = cms_sync("orphans", env=svc.env, cwd=svc.cwd).stdout.splitlines()
    assert len(text) == len(in_flight_at_kill) + 1 and text[-1].startswith("nothing is deleted")
    assert svc.jobs().get("pending", 0) == 0  # the notifications stored and queued nothing
    assert len(fs.stores) == sum(stores.values())
    second.terminate()
    print(
        f"\n200 deliveries (+{len(lake.commits)} echoes of patches), {len(doc_ids)} documents, "
        f"{sum(stores.values())} stores for {len(urls)} assets "
        f"({len(in_flight_at_kill)} in flight at kill -9), {len(lake.commits)} patches "
        f"({len(lake.mutations) - len(lake.commits)} mutate requests refused with 409)"
    )


def test_bad_signature_leaves_no_trace(service: Service) -> None:
    proc = service.start()
    d = service.deliveries(proc.url)
    body, headers = d.groq("post-1", "post")
    headers[signature.HEADER] = signature.sign("not-the-secret", body, 1_763_700_000_000)
    assert d.post((body, headers)) == 401
    assert service.jobs() == {}
    with sqlite3.connect(service.cwd / "cms-sync.db") as conn:
        assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 0


def test_permanent_refusal_then_replay_after_the_fix(service: Service) -> None:
    lake, fs = service.lake, service.fs
    url = lake.documents[lake.documents["post-3"]["mainImage"]["asset"]["_ref"]]["url"]
    fs.refuse.add(url)
    proc = service.start()
    d = service.deliveries(proc.url)
    assert d.post(d.groq("post-3", "post")) == 202
    service.wait(lambda: service.jobs().get("failed") == 1)

    listed = cms_sync("failures", "--json", env=service.env, cwd=service.cwd)
    (failure,) = json.loads(listed.stdout)
    assert failure["document_id"] == "post-3" and failure["attempts"] == 1
    assert "Filestack: HTTP 400 Bad Request: Invalid URL" in failure["last_error"]
    text = cms_sync("failures", env=service.env, cwd=service.cwd).stdout
    assert text.startswith("post-3\t1 attempts\t") and "Invalid URL" in text

    fs.refuse.clear()  # the cause is fixed
    replay = cms_sync("replay", "--all-failed", env=service.env, cwd=service.cwd)
    assert (replay.returncode, replay.stdout) == (0, "queued 1: post-3\n")
    service.wait(
        lambda: lake.documents["post-3"]["mainImage"].get("filestackSourceAsset") is not None
    )
    service.wait(service.quiet)
    assert cms_sync("failures", env=service.env, cwd=service.cwd).stdout == "no failed documents\n"
    status = json.loads(cms_sync("status", "--json", env=service.env, cwd=service.cwd).stdout)
    assert status["jobs"] == {"pending": 0, "running": 0, "done": 1, "failed": 0}
    assert status["stored_assets"] == 1
    proc.terminate()


def test_replay_now_runs_in_the_foreground(service: Service) -> None:
    missing = cms_sync("replay", "--now", "post-4", env=service.env, cwd=service.cwd)
    assert missing.returncode == 2 and not (service.cwd / "cms-sync.db").exists()
    service.start().terminate()  # the service made the database, and is stopped
    result = cms_sync("replay", "--now", "post-4", "product-4", env=service.env, cwd=service.cwd)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "post-4: never seen by this store (no job in cms-sync.db); queued anyway",
        "product-4: never seen by this store (no job in cms-sync.db); queued anyway",
        "post-4: stored 1, reused 0, skipped 0; patched",
        "product-4: stored 3, reused 0, skipped 0; patched",
    ]
    assert service.jobs() == {"done": 2}


def test_log_lines_carry_the_delivery_and_job_context_and_no_secret(service: Service) -> None:
    proc = service.start()
    d = service.deliveries(proc.url)
    assert d.post(d.groq("product-2", "product")) == 202
    service.wait(service.quiet)
    proc.terminate()

    events = proc.events
    (listening,) = [e for e in events if e["event"] == "listening"]
    assert (listening["host"], listening["url"]) == ("127.0.0.1", proc.url)
    (queued,) = [e for e in events if e["event"] == "delivery_queued"]
    assert (queued["delivery_id"], queued["source"], queued["document_id"]) == (
        "msg-1",
        "webhook",
        "product-2",
    )
    of_the_job = [e for e in events if e.get("job_id") is not None]
    names = {e["event"] for e in of_the_job}
    assert {"asset_stored", "document_patched", "job_done"} <= names
    for line in of_the_job:
        context = (line["delivery_id"], line["document_id"], line["attempt"], line["source"])
        assert context == ("msg-1", "product-2", 1, "webhook")
    secrets = [v for k, v in service.env.items() if any(m in k for m in ("SECRET", "TOKEN", "KEY"))]
    assert secrets
    text = json.dumps(events)
    assert not [s for s in secrets if s in text]
