"""End to end over real sockets: the emulators' signed webhooks drive the unmodified service.

Only the three settings of ``Emulators.worker_env`` point the service at the emulators.
Waits are on events: the Content Lake's commit hook and the dispatcher's idle condition.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cms_sync.app import create_app
from cms_sync.demo import Slot, catalogue, resolve_media, slots
from cms_sync.emulators import ContentLake, Dispatcher, Faults, Webhook
from cms_sync.emulators.running import Emulators, running
from cms_sync.jobs import StoreStats
from cms_sync.mapping import default_mapping
from servers import RunningApp, run_app
from wiring import make_settings

SECRET = "whsec-emulated"
MAPPING = default_mapping()


@dataclass
class Loop:
    emu: Emulators
    app: RunningApp
    changed: threading.Condition

    @property
    def lake(self) -> ContentLake:
        return self.emu.lake

    @property
    def dispatcher(self) -> Dispatcher:
        assert self.lake.dispatcher is not None
        return self.lake.dispatcher

    def publish(self, docs: list[dict[str, Any]]) -> list[str]:
        for doc in docs:
            self.lake.publish([{"createOrReplace": doc}])
        return [d["_id"] for d in docs]

    def slots(self, ids: list[str]) -> list[Slot]:
        return [s for i in ids for s in slots(self.lake.documents[i], MAPPING)]

    def until(self, done: Callable[[], bool], timeout: float = 30) -> None:
        """Wait for the Content Lake to reach a state, woken by each commit."""
        with self.changed:
            assert self.changed.wait_for(done, timeout), "the Content Lake never got there"

    def settle(self) -> None:
        """Until no delivery is pending and the worker has nothing due, twice over."""
        worker = self.app.service.worker

        async def idle() -> None:
            await asyncio.wait_for(worker.idle.wait(), 30)

        for _ in range(2):
            assert self.dispatcher.wait_idle(30)
            self.app.call(idle)


def demo_documents(lake: ContentLake) -> list[dict[str, Any]]:
    return [resolve_media(copy.deepcopy(d), lake) for d in catalogue()["documents"]]


@contextmanager
def emulated(
    tmp_path: Path,
    *,
    secret: str = SECRET,
    sanity_faults: Faults | None = None,
    filestack_faults: Faults | None = None,
    **settings: Any,
) -> Iterator[Loop]:
    dispatcher = Dispatcher("cmsdemo", "production", base_delay=0.05, max_delay=0.5)
    with running(
        sanity_faults=sanity_faults, filestack_faults=filestack_faults, dispatcher=dispatcher
    ) as emu:
        changed = threading.Condition()

        def notify(_docs: list[dict[str, Any]]) -> None:
            with changed:
                changed.notify_all()

        emu.lake.on_commit = notify
        config = make_settings(
            **{k.lower(): v for k, v in emu.worker_env().items()},
            sanity_webhook_secret=SECRET,
            cms_sync_database=tmp_path / "emulated.db",
            cms_sync_retry_backoff=0,
            cms_sync_job_backoff=0.05,
            cms_sync_job_backoff_max=0.5,
            cms_sync_poll_interval=0.05,
            **settings,
        )
        with run_app(create_app(config, mapping=MAPPING)) as app:
            emu.lake.add_webhook(
                Webhook(
                    f"{app.url}/webhooks/sanity",
                    secret=secret,
                    filter='_type in ["product", "post"]',
                    projection="{_id, _type, _rev}",
                )
            )
            yield Loop(emu, app, changed)


def test_published_documents_are_patched(tmp_path: Path) -> None:
    with emulated(tmp_path) as loop:
        ids = loop.publish(demo_documents(loop.lake))
        loop.until(lambda: all(s.done for s in loop.slots(ids)))
        loop.settle()
        stored = {s.value["filestackHandle"] for s in loop.slots(ids)}
        assets = {s.value["asset"]["_ref"] for s in loop.slots(ids)}
        # One store per distinct asset, each handle's bytes served by the Filestack emulator.
        assert len(stored) == len(assets) == len(loop.emu.filestack.stores)
        for s in loop.slots(ids):
            kept = loop.emu.filestack.files[s.value["filestackHandle"]]
            asset = loop.lake.documents[s.value["asset"]["_ref"]]
            assert len(kept.data) == asset["size"] == s.value["filestackSize"]
            assert kept.mime == asset["mimeType"] == s.value["filestackMimeType"]


def test_a_replaced_image_gets_a_new_handle_and_the_old_one_is_unreferenced(
    tmp_path: Path,
) -> None:
    with emulated(tmp_path) as loop:
        ids = loop.publish(demo_documents(loop.lake)[:1])
        loop.until(lambda: all(s.done for s in loop.slots(ids)))
        old = loop.lake.documents[ids[0]]["mainImage"]["filestackHandle"]
        new = resolve_media({"file": "chair-new.png"}, loop.lake)["asset"]
        loop.lake.edit(ids[0], lambda doc: doc["mainImage"].update(asset=new))
        loop.until(lambda: all(s.done for s in loop.slots(ids)))
        handles = {s.value["filestackHandle"] for s in loop.slots(ids)}
        assert old not in handles
        assert loop.lake.documents[ids[0]]["mainImage"]["filestackSourceAsset"] == new["_ref"]


def test_an_editors_race_costs_a_409_and_loses_nothing(tmp_path: Path) -> None:
    with emulated(tmp_path) as loop:
        raced = threading.Event()

        def editor(lake: ContentLake) -> None:
            if not raced.is_set():  # the first write-back meets an editor's publish
                raced.set()
                lake.edit("product-oak-chair", lambda doc: doc.update(title="Oak chair II"))

        loop.lake.before_mutate = editor
        ids = loop.publish(demo_documents(loop.lake)[:1])
        loop.until(lambda: all(s.done for s in loop.slots(ids)))
        loop.settle()
        assert raced.is_set() and len(loop.lake.mutations) == len(loop.lake.commits) + 1
        assert loop.lake.documents["product-oak-chair"]["title"] == "Oak chair II"
        stores = len(loop.emu.filestack.stores)
        assert stores == len({s.value["asset"]["_ref"] for s in loop.slots(ids)})


def test_our_own_patch_costs_one_delivery_and_no_mutation(tmp_path: Path) -> None:
    with emulated(tmp_path) as loop:
        ids = loop.publish(demo_documents(loop.lake)[:2])
        loop.until(lambda: all(s.done for s in loop.slots(ids)))
        loop.settle()
        per_doc = {i: [d for d in loop.dispatcher.deliveries if d.document_id == i] for i in ids}
        # The publish, and the echo of our patch: nothing after it.
        assert {i: len(d) for i, d in per_doc.items()} == dict.fromkeys(ids, 2)
        assert all(d.outcome == "delivered" for ds in per_doc.values() for d in ds)
        patched = [m["patch"]["id"] for commit in loop.lake.commits for m in commit]
        assert sorted(patched) == sorted(ids)  # one patch per document, no more


@pytest.mark.parametrize(
    ("sanity", "filestack"),
    [
        (Faults(rate_limits=(2, 40), seed=1), None),
        (Faults(statuses={429: 0.2, 503: 0.15}, seed=2), Faults(statuses={502: 0.3}, seed=3)),
    ],
    ids=["429-storm", "5xx-bursts"],
)
def test_storms_converge(tmp_path: Path, sanity: Faults, filestack: Faults | None) -> None:
    # A 502 from Filestack may have stored the file: such stores back off per asset and
    # are capped (tests/test_ambiguity.py); here the backoff is short and the cap high.
    ambiguity = {"cms_sync_ambiguous_store_backoff": 0.1, "cms_sync_ambiguous_store_max": 20}
    faults = {"sanity_faults": sanity, "filestack_faults": filestack}
    # A request per document, or batching leaves the demo too few requests to meet 429s.
    alone = {"cms_sync_batch_size": 1}
    with emulated(tmp_path, **faults, **ambiguity, **alone) as loop:
        ids = loop.publish(demo_documents(loop.lake))
        loop.until(lambda: all(s.done for s in loop.slots(ids)), timeout=60)
        injected = sum(sanity.injected.values()) + sum((filestack or sanity).injected.values())
        assert injected > 0  # the faults really happened


def test_a_bad_signature_queues_nothing(tmp_path: Path) -> None:
    with emulated(tmp_path, secret="not-the-secret") as loop:
        loop.publish(demo_documents(loop.lake))
        assert loop.dispatcher.wait_idle(30)
        outcomes = {d.outcome for d in loop.dispatcher.deliveries}
        statuses = {a for d in loop.dispatcher.deliveries for a in d.attempts}
        assert outcomes == {"dropped"} and statuses == {401}

        async def stats() -> StoreStats:
            return await loop.app.service.store.stats(now=time.time())

        assert not any(loop.app.call(stats).counts.values())
        assert not loop.emu.filestack.stores and not loop.lake.mutations
