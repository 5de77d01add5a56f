"""``cms-sync backfill``: a keyset sweep into the durable job store, against the
emulators over real sockets, with the jobs run in this process (``--now``)."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from process import ServeProcess, cms_sync

from cms_sync import groq
from cms_sync.backfill import Scope, build_sweep_queries, scope_for
from cms_sync.cli import run_backfill
from cms_sync.document import parse_document
from cms_sync.errors import ConfigError
from cms_sync.mapping import default_mapping
from cms_sync.planner import Action, plan_document
from cms_sync.queries import build_document_query
from cms_sync.settings import Settings
from fakes import GRANTED_STORES_SQL, FakeContentLake, FakeFilestack, load_dataset
from scenarios import catalogue, converged, slots
from servers import serve
from wiring import crash_test_env, make_settings


@dataclass
class World:
    lake: FakeContentLake
    fs: FakeFilestack
    settings: Settings

    @property
    def doc_ids(self) -> list[str]:
        return [i for i, d in self.lake.documents.items() if d["_type"] in ("product", "post")]

    def distinct_assets(self) -> set[str]:
        return {s["asset"]["_ref"] for i in self.doc_ids for s in slots(self.lake.documents[i])}

    def backfill(self, **options: Any) -> tuple[int, str]:
        out = io.StringIO()
        args: dict[str, Any] = {
            "types": [],
            "everything": False,
            "dry_run": False,
            "limit": None,
            "now": True,
            "page_size": 7,
            "poll": 0.02,
        }
        args.update(options)
        code = asyncio.run(run_backfill(self.settings, default_mapping(), out=out, **args))
        return code, out.getvalue()

    def stores(self) -> Counter[str]:
        return Counter(body["sources"][0] for body in self.fs.stores)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    documents = catalogue(products=30, posts=20, shared=4)
    lake = FakeContentLake(documents={d["_id"]: d for d in documents})
    fs = FakeFilestack()
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        settings = make_settings(
            sanity_api_host=sanity_url,
            filestack_process_url=f"{filestack_url}/process",
            cms_sync_database=str(tmp_path / "jobs.db"),
            cms_sync_poll_interval=0.05,
            cms_sync_workers=4,
            cms_sync_sanity_mutate_rate=1000,  # the limits have tests of their own
        )
        yield World(lake, fs, settings)


def page_queries(lake: FakeContentLake) -> list[str]:
    """The text of every keyset page query the lake answered (GET, or POST when long)."""
    texts = [
        r.url.params.get("query") or json.loads(r.content or b"{}").get("query", "")
        for r in lake.queries
    ]
    return [t for t in texts if "_id > $after" in t]


def test_backfill_now_converges_every_document_and_a_rerun_sweeps_nothing(world: World) -> None:
    code, out = world.backfill()
    assert code == 0, out
    assert converged(world.lake.documents, world.doc_ids)
    stores = world.stores()
    assert len(stores) == len(world.distinct_assets()) and set(stores.values()) == {1}
    assert "backfill needed:post,product finished: 50 documents swept" in out
    # Keyset pages of 7, one query each: 50 documents are 8 pages, then an empty one.
    assert len(page_queries(world.lake)) == 9
    assert all("[0...7]" in q and "order(_id asc)" in q for q in page_queries(world.lake))

    code, out = world.backfill()
    assert code == 0 and "0 documents swept" in out
    assert sum(world.stores().values()) == len(world.distinct_assets())  # nothing stored again


def test_a_limited_backfill_resumes_where_it_stopped_and_stores_nothing_twice(
    world: World,
) -> None:
    code, out = world.backfill(limit=12)
    assert code == 0 and "paused after --limit 12: 12 documents swept" in out
    synced = [i for i in world.doc_ids if converged(world.lake.documents, [i])]
    assert len(synced) == 12 and synced == sorted(world.doc_ids)[:12]  # in _id order

    code, out = world.backfill()
    assert code == 0 and "finished: 50 documents swept" in out  # the run's count, resumed
    assert converged(world.lake.documents, world.doc_ids)
    assert set(world.stores().values()) == {1}


def test_dry_run_counts_per_type_and_distinct_assets_and_writes_nothing(world: World) -> None:
    code, out = world.backfill(dry_run=True)
    assert code == 0
    assert "post: 20 documents" in out and "product: 30 documents" in out
    assert f"assets: {len(world.distinct_assets())} to store, 0 already stored" in out
    assert not world.fs.stores and not world.lake.commits

    world.backfill(types=["post"])  # posts' own images are stored; products' are not
    code, out = world.backfill(dry_run=True)
    assert "post: 0 documents" in out and "product: 30 documents" in out
    assert f"assets: {30 + 4} to store, 0 already stored" in out


def test_all_re_checks_documents_that_are_in_sync(world: World) -> None:
    world.backfill(types=["post"])
    commits = len(world.lake.commits)
    code, out = world.backfill(types=["post"], everything=True)
    assert code == 0 and "backfill all:post finished: 20 documents swept" in out
    assert len(world.lake.commits) == commits  # in sync: re-checked, nothing written


def test_failures_are_listed_and_the_exit_is_1(world: World) -> None:
    doc = world.lake.documents["post-3"]
    asset_id = doc["mainImage"]["asset"]["_ref"]
    world.lake.documents[asset_id]["url"] = "https://evil.example/post-3.png"
    code, out = world.backfill()
    assert code == 1, out
    (line,) = [x for x in out.splitlines() if x.startswith("post-3\t")]
    assert "not sent to Filestack" in line
    assert converged(world.lake.documents, [i for i in world.doc_ids if i != "post-3"])


def test_an_unmapped_type_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="--type article: not in the media mapping"):
        scope_for(default_mapping(), ["article"], everything=False)


def test_the_sweep_selects_exactly_the_documents_the_planner_would_store() -> None:
    """Over the recorded dataset: the sweep's filter and the planner agree, document by
    document (a slot with an asset and no handle made from it)."""
    dataset = [d for d in load_dataset() if not d["_id"].startswith("drafts.")]  # published
    mapping = default_mapping()
    queries = build_sweep_queries(mapping, Scope(("post", "product")), page_size=1000)
    swept = groq.evaluate(queries.page, dataset, {**queries.params, "after": ""})
    assert isinstance(swept, list)
    fetch = build_document_query(mapping)
    expected = []
    for doc in dataset:
        if doc.get("_type") not in mapping.types:
            continue
        (fetched,) = groq.evaluate(fetch.text, dataset, fetch.params([doc["_id"]]))
        plan = plan_document(parse_document(fetched, mapping), ())
        if any(s.action not in (Action.IN_SYNC, Action.EMPTY) for s in plan.slots):
            expected.append(doc["_id"])
    assert [d["_id"] for d in swept] == sorted(expected)
    assert 0 < len(expected) < len([d for d in dataset if d.get("_type") in mapping.types])


def test_killed_half_way_a_rerun_finishes_without_storing_again(tmp_path: Path) -> None:
    """``cms-sync backfill --now`` as a process, killed with ``kill -9`` while stores are in
    flight, then run again: only the stores cut off by the kill are made twice."""
    documents = catalogue(products=30, posts=20, shared=4)
    lake = FakeContentLake(documents={d["_id"]: d for d in documents})
    fs = FakeFilestack()
    database = tmp_path / "jobs.db"
    doc_ids = [i for i, d in lake.documents.items() if d["_type"] in ("product", "post")]
    distinct = {s["asset"]["_ref"] for i in doc_ids for s in slots(lake.documents[i])}

    def recorded() -> int:
        with closing(sqlite3.connect(database)) as conn:
            return int(conn.execute("SELECT count(*) FROM assets").fetchone()[0])

    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = crash_test_env(
            sanity_url,
            filestack_url,
            CMS_SYNC_DATABASE=str(database),
            CMS_SYNC_FILESTACK_TIMEOUT="1.5",  # a store cut off by the kill holds 3 s + 5
            CMS_SYNC_SANITY_MUTATE_RATE="1000",
        )
        first = subprocess.Popen(
            [sys.executable, "-m", "cms_sync", "backfill", "--now"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while len(fs.stores) < 15:
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            fs.gate = threading.Event()  # the stores from now on hang, in flight
            assert fs.arrived.wait(30)
            while recorded() < len(fs.stores):  # every answered store is on disk
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            first.kill()
            first.wait()
        with closing(sqlite3.connect(database)) as conn:
            granted = {a for (a,) in conn.execute(GRANTED_STORES_SQL).fetchall()}
        in_flight = fs.held_after_kill({lake.documents[a]["url"] for a in granted})
        stored_before = len(fs.stores)
        fs.gate.set()

        again = cms_sync("backfill", "--now", env=env, cwd=tmp_path, timeout=90)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "finished: 50 documents swept" in again.stdout

    assert 15 <= stored_before < len(distinct)  # it really was killed half-way
    assert converged(lake.documents, doc_ids)
    stores = Counter(body["sources"][0] for body in fs.stores)
    assert set(stores) == {lake.documents[a]["url"] for a in distinct}
    twice = {url for url, n in stores.items() if n > 1}
    assert twice <= in_flight and max(stores.values()) <= 2


def test_without_now_the_running_service_runs_the_jobs_and_no_filestack_key_is_needed(
    tmp_path: Path,
) -> None:
    """``cms-sync serve`` runs; ``cms-sync backfill`` (no ``--now``), holding only Sanity's
    credentials and the database, queues the jobs and waits for the service's workers."""
    documents = catalogue(products=24, posts=16, shared=4)
    lake = FakeContentLake(documents={d["_id"]: d for d in documents})
    fs = FakeFilestack()
    doc_ids = [i for i, d in lake.documents.items() if d["_type"] in ("product", "post")]
    distinct = {s["asset"]["_ref"] for i in doc_ids for s in slots(lake.documents[i])}
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = crash_test_env(
            sanity_url,
            filestack_url,
            CMS_SYNC_DATABASE=str(tmp_path / "jobs.db"),
            CMS_SYNC_SANITY_MUTATE_RATE="1000",
            SANITY_WEBHOOK_SECRET="whsec-backfill-test",
        )
        service = ServeProcess(env, tmp_path)
        try:
            feed_env = {
                k: v
                for k, v in env.items()
                if not k.startswith("FILESTACK_") and k != "SANITY_WEBHOOK_SECRET"
            }
            fed = cms_sync("backfill", env=feed_env, cwd=tmp_path, timeout=90)
            assert fed.returncode == 0, fed.stdout + fed.stderr
            assert "finished: 40 documents swept" in fed.stdout
            assert converged(lake.documents, doc_ids)  # converged when it said so
            ran: set[str] = set()

            def every_job_done(event: dict[str, Any]) -> bool:
                if event.get("event") == "job_done":
                    ran.add(event["document_id"])
                return ran == set(doc_ids)

            service.wait_for(every_job_done, 30)  # the service's workers ran them all
            service.terminate()
        finally:
            service.close()
    stores = Counter(body["sources"][0] for body in fs.stores)
    assert set(stores) == {lake.documents[a]["url"] for a in distinct}
    assert set(stores.values()) == {1}
