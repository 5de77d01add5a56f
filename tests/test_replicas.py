"""Two ``cms-sync serve`` replicas on one PostgreSQL database, as processes.

Every delivery reaches both (as when Sanity has two webhooks for the project, or a load
balancer retries a delivery on the other replica). One replica is killed with ``kill -9``
while stores are in flight and jobs are leased, and started again. The other recovers
its leases; the shared ledger keeps an asset to one store across both.

The replicas are other processes: where the test waits for them it polls the database
and the fakes with a deadline.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from process import ServeProcess

from fakes import GRANTED_STORES_SQL, FakeContentLake, FakeFilestack
from scenarios import catalogue, converged, slots
from senders import SECRET, Deliveries
from servers import serve
from wiring import crash_test_env

TOKEN = "sk-test-token"


@dataclass
class Replicas:
    lake: FakeContentLake
    fs: FakeFilestack
    env: dict[str, str]
    cwd: Path
    database: str
    procs: list[ServeProcess] = field(default_factory=list)
    echoes: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def start(self) -> ServeProcess:
        proc = ServeProcess(self.env, self.cwd)
        self.procs.append(proc)
        return proc

    def jobs(self) -> dict[str, int]:
        with psycopg.connect(self.database) as conn:
            rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def wait(self, condition: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; jobs: {self.jobs()}"
            time.sleep(0.1)


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    documents = catalogue(products=100, posts=100, shared=8)
    lake = FakeContentLake(documents={d["_id"]: d for d in documents}, token=TOKEN)
    fs = FakeFilestack()
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = crash_test_env(
            sanity_url,
            filestack_url,
            SANITY_WEBHOOK_SECRET=SECRET,
            CMS_SYNC_DATABASE=postgres_url,
            CMS_SYNC_POLL_INTERVAL="0.5",  # NOTIFY wakes the workers; this is the fallback
            CMS_SYNC_FILESTACK_TIMEOUT="1.5",  # a cut-off store holds its asset 3 s
        )
        world = Replicas(lake, fs, env, tmp_path, postgres_url)
        lake.on_commit = lambda docs: [world.echoes.put(doc) for doc in docs]
        try:
            yield world
        finally:
            for proc in world.procs:
                proc.close()


def to_both(d: Deliveries, message: tuple[bytes, dict[str, str]], urls: list[str]) -> None:
    """One delivery, the same idempotency key, posted to every replica."""
    for url in urls:
        assert d.post(message, url) in (200, 202)


def test_two_replicas_share_the_work_and_survive_a_kill_9(replicas: Replicas) -> None:
    world, lake, fs = replicas, replicas.lake, replicas.fs
    doc_ids = [i for i, d in lake.documents.items() if d["_type"] in ("product", "post")]
    assert len(doc_ids) == 200
    distinct = {s["asset"]["_ref"] for i in doc_ids for s in slots(lake.documents[i])}
    rng = random.Random(7)

    one, two = world.start(), world.start()
    urls = {"one": one.url, "two": two.url}
    targets = [tuple(urls.values())]  # the echo thread's view, replaced whole
    d = Deliveries(one.url)

    # Echoes: the Content Lake's update webhook for every patch, to both replicas too.
    stop = threading.Event()
    echo_errors: list[str] = []

    def echo() -> None:
        """Post each echo to every live replica; retry as Sanity does when one cannot take it
        (a replica that is starting, or a loaded machine's slow answer)."""
        sender = Deliveries(one.url)
        with sender.http:
            while not stop.is_set():
                try:
                    doc = world.echoes.get(timeout=0.05)
                except queue.Empty:
                    continue
                message = sender.groq(doc["_id"], doc["_type"])
                for url in targets[0]:
                    for _ in range(50):
                        try:
                            if sender.post(message, url) in (200, 202):
                                break
                        except httpx.TransportError:
                            pass
                        stop.wait(0.2)
                    else:
                        echo_errors.append(f"echo of {doc['_id']} to {url} never accepted")

    # Phase 1: Filestack holds every store; both replicas fill their workers and wait.
    fs.gate = threading.Event()
    order = rng.sample(doc_ids, len(doc_ids))
    for doc_id in order[:80]:
        to_both(d, d.groq(doc_id, doc_id.split("-")[0], "create"), list(urls.values()))
    assert fs.arrived.wait(30)
    world.wait(lambda: len(fs.held) >= 6)  # both replicas' workers are storing
    two.kill()  # kill -9: its leases, its stores in flight and its sockets die with it
    del urls["two"]
    targets[0] = tuple(urls.values())
    with psycopg.connect(world.database) as conn:
        granted = {a for (a,) in conn.execute(GRANTED_STORES_SQL).fetchall()}
    in_flight_at_kill = fs.held_after_kill({lake.documents[a]["url"] for a in granted})
    fs.gate.set()

    # Phase 2: the rest, while it is down (Sanity retries what the dead one refused) ...
    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    for doc_id in order[80:140]:
        assert d.post(d.groq(doc_id, doc_id.split("-")[0], "create"), urls["one"]) == 202
    # ... then it is back, and everything reaches both again.
    two = world.start()
    urls["two"] = two.url
    targets[0] = tuple(urls.values())
    for doc_id in order[140:]:
        to_both(d, d.groq(doc_id, doc_id.split("-")[0], "create"), list(urls.values()))
    for doc_id in rng.sample(doc_ids, 40):  # editors publishing again, unchanged media
        to_both(d, d.groq(doc_id, doc_id.split("-")[0]), list(urls.values()))

    def settled() -> bool:
        assert not echo_errors, echo_errors
        jobs = world.jobs()
        return (
            converged(lake.documents, doc_ids)
            and world.echoes.empty()
            and not jobs.get("pending")
            and not jobs.get("running")
        )

    world.wait(settled)
    stop.set()
    echoer.join(timeout=10)

    # Every slot carries its store's fields; no job is left running, pending or failed.
    for doc_id in doc_ids:
        for slot in slots(lake.documents[doc_id]):
            assert slot["filestackSourceAsset"] == slot["asset"]["_ref"]
            assert all(
                slot[f] is not None
                for f in ("filestackHandle", "filestackUrl", "filestackSize", "filestackMimeType")
            )
    assert set(world.jobs()) == {"done"}

    # One store per distinct asset across both replicas, except stores the kill cut off
    # mid-request (their handles died with the process), each stored once more at most.
    stores = Counter(body["sources"][0] for body in fs.stores)
    assert set(stores) == {lake.documents[a]["url"] for a in distinct}
    twice = {url for url, n in stores.items() if n > 1}
    assert twice <= in_flight_at_kill and max(stores.values()) <= 2

    # No document is patched twice for the same content: no patch sets a field to what an
    # earlier patch already set. A document using assets whose store the kill cut off may
    # take a patch more per such asset (its other slots first, that slot when the hold ends).
    sets: dict[str, Counter[tuple[str, str]]] = {}
    for mutation in (m for commit in lake.commits for m in commit):
        patch = mutation["patch"]
        fields = sets.setdefault(patch["id"], Counter())
        fields.update((path, repr(value)) for path, value in patch["set"].items())
    for doc_id, fields in sets.items():
        assert max(fields.values()) == 1, (doc_id, fields.most_common(1))
    patches = Counter(p["patch"]["id"] for m in lake.commits for p in m)
    for doc_id in doc_ids:
        # (cut off: granted in the ledger at the kill, whether or not its request got out)
        cut_off = {s["asset"]["_ref"] for s in slots(lake.documents[doc_id])} & granted
        assert 1 <= patches[doc_id] <= 1 + len(cut_off), doc_id

    # Both live replicas did work, and both shut down cleanly.
    for proc in (one, two):
        proc.wait_for(lambda e: e["event"] == "job_done", timeout=10)
    one.terminate()
    two.terminate()
    d.http.close()
    print(
        f"\n2 replicas, {len(doc_ids)} documents, {d.sent} deliveries, "
        f"{sum(stores.values())} stores for {len(distinct)} assets "
        f"({len(in_flight_at_kill)} in flight at kill -9, {len(twice)} stored twice), "
        f"{len(lake.commits)} patches"
    )
