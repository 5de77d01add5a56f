from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, TypeVar

import httpx
import pytest

from cms_sync.errors import ConnectError, RejectedError, RevisionConflict, SlotBlocked
from cms_sync.events import (
    AssetStored,
    CallEnded,
    Event,
    PatchConflict,
    Remote,
    StoreUnanswered,
    SyncEnded,
)
from cms_sync.records import MemoryAssetRecords, StoredAsset
from fakes import FakeContentLake, FakeFilestack
from wiring import make_settings, wired_syncer

pytestmark = pytest.mark.anyio

E = TypeVar("E")

FIELDS = ("filestackHandle", "filestackUrl", "filestackSize", "filestackMimeType")
PRODUCT_1_SLOTS = (
    "mainImage",
    'gallery[_key=="a1b2c3"]',
    'gallery[_key=="d4e5f6"]',
    'gallery[_key=="0f9e8d"]',
    "specSheet",
)


def asset_of(lake: FakeContentLake, doc_id: str, path: str) -> dict[str, Any]:
    ref = lake.slot_value(doc_id, path)["asset"]["_ref"]
    return lake.documents[ref]


def stored_sources(fs: FakeFilestack) -> list[str]:
    return [body["sources"][0] for body in fs.stores]


async def test_product_gets_every_slot_patched_with_the_store_response() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("product-1")

    assert report.ok and report.patched
    assert (report.stored, report.reused, report.skipped) == (5, 0, 0)
    assert len(fs.stores) == 5
    assert len(lake.mutations) == 1
    (patch,) = lake.mutations[0]
    assert patch["patch"]["ifRevisionID"] == "rP1aaaaaaaaaaaaaaaaaaa"
    for path in PRODUCT_1_SLOTS:
        slot = lake.slot_value("product-1", path)
        asset = asset_of(lake, "product-1", path)
        store = next(b for b in fs.stores if b["sources"] == [asset["url"]])
        assert all(slot[name] is not None for name in FIELDS)
        assert slot["filestackUrl"] == f"https://cdn.filestackcontent.com/{slot['filestackHandle']}"
        assert slot["filestackSourceAsset"] == asset["_id"]
        assert store["tasks"][0]["params"]["filename"] == asset["originalFilename"]
        assert store["upload_tags"] == {  # what Filestack's notification carries back
            "sanity_document_id": "product-1",
            "sanity_asset_id": asset["_id"],
            "sanity_dataset": "cmsdemo/production",
            "cms_sync_store": "1",  # the asset's first store
        }
    assert lake.slot_value("product-1", "specSheet")["filestackMimeType"] == "application/pdf"


async def test_second_run_sends_no_store_and_no_mutation() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        await syncer.sync("product-1")
    async with wired_syncer(lake, fs) as fresh_process:  # nothing remembered in memory
        report = await fresh_process.sync("product-1")

    assert report.ok and not report.patched
    assert (report.stored, report.reused, report.skipped) == (0, 0, 5)
    assert len(fs.stores) == 5
    assert len(lake.mutations) == 1


async def test_already_synced_document_gets_no_mutation() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("product-synced")
    assert report.ok and not report.patched and report.skipped == 1
    assert fs.stores == [] and lake.mutations == []


async def test_replaced_asset_is_stored_again_and_marked_with_the_new_asset() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("product-replaced")
    slot = lake.slot_value("product-replaced", "mainImage")
    new_asset = asset_of(lake, "product-replaced", "mainImage")
    assert report.stored == 1 and report.patched
    assert stored_sources(fs) == [new_asset["url"]]
    assert slot["filestackHandle"] != "OLDhandle0000001"
    assert slot["filestackSourceAsset"] == new_asset["_id"]
    assert slot["filestackMimeType"] == "image/png"


async def test_same_asset_in_one_document_and_across_documents_is_stored_once() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        a = await syncer.sync("product-shared-a")
        b = await syncer.sync("product-shared-b")
    assert len(fs.stores) == 1
    assert (a.stored, a.reused) == (1, 1)
    assert (b.stored, b.reused) == (0, 1)
    handles = {
        lake.slot_value("product-shared-a", "mainImage")["filestackHandle"],
        lake.slot_value("product-shared-a", 'gallery[_key=="s1"]')["filestackHandle"],
        lake.slot_value("product-shared-b", "mainImage")["filestackHandle"],
    }
    assert len(handles) == 1


async def test_concurrent_syncs_sharing_an_asset_make_one_store() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        a, b = await asyncio.gather(
            syncer.sync("product-shared-a"), syncer.sync("product-shared-b")
        )
    assert a.ok and b.ok
    assert len(fs.stores) == 1
    assert a.stored + b.stored == 1


async def test_non_allow_listed_host_is_never_sent_and_fails_the_slot() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("post-foreign-host")
    assert fs.stores == [] and lake.mutations == []
    assert not report.ok
    (failure,) = report.failures
    assert isinstance(failure.error, SlotBlocked)
    assert "images.example.net" in str(failure.error)


async def test_a_blocked_slot_does_not_hold_back_the_others() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    foreign = lake.documents["post-foreign-host"]["mainImage"]
    lake.documents["product-1"]["specSheet"] = foreign
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("product-1")
    assert report.patched and report.stored == 4
    assert [f.slot for f in report.failures] == ["specSheet"]
    assert lake.slot_value("product-1", "specSheet").get("filestackHandle") is None
    assert lake.slot_value("product-1", "mainImage")["filestackHandle"]


async def test_legacy_asset_id_and_missing_media() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        legacy = await syncer.sync("post-legacy")
        empty_post = await syncer.sync("post-no-media")
        empty_product = await syncer.sync("product-no-media")
    slot = lake.slot_value("post-legacy", "mainImage")
    assert legacy.patched and slot["filestackSourceAsset"] == (
        "image-Tb9Ew8CXIwaY6R1kjMvI0uRR-2000x3000-jpg"
    )
    for report in (empty_post, empty_product):
        assert report.ok and not report.patched and report.stored == 0
    assert len(lake.mutations) == 1


async def test_revision_conflict_refetches_and_replans_without_storing_again() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    edits = []

    def editor_publishes_meanwhile(lake: FakeContentLake) -> None:
        if not edits:
            edits.append(1)
            lake.documents["post-1"]["title"] = "Edited while we stored"
            lake.touch(lake.documents["post-1"])

    lake.before_mutate = editor_publishes_meanwhile
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("post-1")
    assert report.ok and report.patched and report.replans == 1
    assert len(fs.stores) == 1
    assert len(lake.mutations) == 2
    assert lake.documents["post-1"]["title"] == "Edited while we stored"
    assert lake.slot_value("post-1", "mainImage")["filestackHandle"]


async def test_replans_are_bounded() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    lake.before_mutate = lambda lake: lake.touch(lake.documents["post-1"])
    async with wired_syncer(lake, fs, settings=make_settings(cms_sync_max_replans=2)) as syncer:
        report = await syncer.sync("post-1")
    assert isinstance(report.error, RevisionConflict)
    assert len(lake.mutations) == 3
    assert len(fs.stores) == 1


async def test_stored_asset_record_is_reused_instead_of_storing_again() -> None:
    """An editor publishing an old draft wipes our fields: re-patch from the record."""
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    records = MemoryAssetRecords()
    async with wired_syncer(lake, fs, records=records) as syncer:
        await syncer.sync("post-1")
        image = lake.documents["post-1"]["mainImage"]
        handle = image["filestackHandle"]
        for name in (*FIELDS, "filestackSourceAsset"):
            del image[name]
        lake.touch(lake.documents["post-1"])
        report = await syncer.sync("post-1")
    assert (report.stored, report.reused) == (0, 1) and report.patched
    assert len(fs.stores) == 1
    assert lake.slot_value("post-1", "mainImage")["filestackHandle"] == handle


async def test_filestack_refusal_fails_the_slot_and_patches_nothing() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    url = asset_of(lake, "post-1", "mainImage")["url"]
    fs.refuse.add(url)
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("post-1")
    (failure,) = report.failures
    assert isinstance(failure.error, RejectedError) and failure.error.status == 400
    assert lake.mutations == []


async def test_unreachable_filestack_fails_every_slot_without_a_mutation() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()

    def refuse_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    fs.scripted = [refuse_connection] * 100
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("product-1")
    assert len(report.failures) == 5
    assert all(isinstance(f.error, ConnectError) for f in report.failures)
    assert lake.mutations == []


async def test_size_and_mime_fall_back_to_the_asset_when_the_response_lacks_them() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    fs.scripted = [
        lambda r: httpx.Response(200, json={"handle": "h1", "url": "https://cdn.example/h1"})
    ]
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("post-1")
    slot = lake.slot_value("post-1", "mainImage")
    asset = asset_of(lake, "post-1", "mainImage")
    assert report.patched
    assert (slot["filestackSize"], slot["filestackMimeType"]) == (asset["size"], asset["mimeType"])


async def test_dry_run_plans_without_calling_filestack_or_mutate() -> None:
    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    async with wired_syncer(lake, fs) as syncer:
        report = await syncer.sync("product-1", dry_run=True)
    assert report.plan is not None and len(report.plan.assets_to_store()) == 5
    assert fs.stores == [] and lake.mutations == []
    assert len(lake.queries) == 1


async def test_records_are_written_before_the_patch() -> None:
    events: list[str] = []

    class RecordingRecords(MemoryAssetRecords):
        async def put(self, record: StoredAsset) -> StoredAsset:
            events.append(f"record {record.handle}")
            return await super().put(record)

    lake, fs = FakeContentLake.from_fixtures(), FakeFilestack()
    lake.before_mutate = lambda lake: events.append("mutate")
    async with wired_syncer(lake, fs, records=RecordingRecords()) as syncer:
        await syncer.sync("post-1")
    handle = lake.slot_value("post-1", "mainImage")["filestackHandle"]
    assert events == [f"record {handle}", "mutate"]


class Heard:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


async def test_the_syncer_and_its_clients_tell_every_store_call_and_the_end() -> None:
    lake, fs, heard = FakeContentLake.from_fixtures(), FakeFilestack(), Heard()
    edits: list[int] = []

    def editor_publishes_meanwhile(lake: FakeContentLake) -> None:
        if not edits:
            edits.append(1)
            lake.touch(lake.documents["product-1"])

    lake.before_mutate = editor_publishes_meanwhile
    async with wired_syncer(lake, fs, events=heard) as syncer:
        await syncer.sync("product-1")

    stored = heard.of(AssetStored)
    assert sorted(e.handle for e in stored) == sorted(fs.files)
    assert [e.attempt for e in heard.of(PatchConflict)] == [1]
    (ended,) = heard.of(SyncEnded)
    assert (ended.document_id, ended.patched, ended.stored, ended.error) == (
        "product-1",
        True,
        5,
        None,
    )
    assert ended.rev is not None
    calls = heard.of(CallEnded)
    by_kind = Counter((c.remote, c.operation, c.status) for c in calls)
    assert by_kind[Remote.FILESTACK, "store", 200] == 5
    assert by_kind[Remote.SANITY, "mutate", 409] == 1
    assert by_kind[Remote.SANITY, "mutate", 200] == 1
    assert all(c.seconds >= 0 and c.error_type is None for c in calls)


async def test_a_store_without_an_answer_is_told_as_unanswered_with_its_error_class() -> None:
    lake, fs, heard = FakeContentLake.from_fixtures(), FakeFilestack(), Heard()

    def gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway")

    fs.scripted = [gateway]
    async with wired_syncer(lake, fs, events=heard) as syncer:
        await syncer.sync("post-1")
    (unanswered,) = heard.of(StoreUnanswered)
    assert unanswered.attempts == 1 and "502" in unanswered.error
    (ended,) = heard.of(SyncEnded)
    assert not ended.patched and ended.failed_slots == 1 and ended.error is None
    assert [c.status for c in heard.of(CallEnded) if c.operation == "store"] == [502]


async def test_a_call_that_gets_no_answer_is_told_with_the_error() -> None:
    lake, fs, heard = FakeContentLake.from_fixtures(), FakeFilestack(), Heard()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    lake.scripted = [down] * 10
    async with wired_syncer(lake, fs, events=heard) as syncer:
        report = await syncer.sync("post-1")
    assert report.error is not None
    (ended,) = heard.of(SyncEnded)
    assert ended.error_type == type(report.error).__name__ == "ConnectError"
    calls = heard.of(CallEnded)
    assert calls and all(
        (c.remote, c.status, c.error_type) == (Remote.SANITY, None, "ConnectError") for c in calls
    )
