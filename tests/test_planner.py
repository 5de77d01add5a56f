from __future__ import annotations

from dataclasses import replace

import pytest

from cms_sync.allowlist import AllowedHost
from cms_sync.document import Asset, Slot, parse_document
from cms_sync.mapping import default_mapping
from cms_sync.planner import Action, plan_document, plan_slot
from fakes import recorded_document

CDN = (AllowedHost("cdn.sanity.io"),)
S, IN, E, B = Action.STORE, Action.IN_SYNC, Action.EMPTY, Action.BLOCKED


def plan_fixture(doc_id: str) -> list[tuple[str, Action]]:
    result = recorded_document(doc_id)
    plan = plan_document(parse_document(result, default_mapping()), CDN)
    return [(p.slot.path, p.action) for p in plan.slots]


@pytest.mark.parametrize(
    ("doc_id", "expected"),
    [
        (
            "product-1",
            [
                ("mainImage", S),
                ('gallery[_key=="a1b2c3"]', S),
                ('gallery[_key=="d4e5f6"]', S),
                ('gallery[_key=="0f9e8d"]', S),
                ("specSheet", S),
            ],
        ),
        ("post-1", [("mainImage", S)]),
        ("post-no-media", []),
        ("product-no-media", []),
        ("product-synced", [("mainImage", IN)]),
        ("product-replaced", [("mainImage", S)]),
        ("post-legacy", [("mainImage", S)]),
        ("product-shared-a", [("mainImage", S), ('gallery[_key=="s1"]', S)]),
        ("post-foreign-host", [("mainImage", B)]),
    ],
)
def test_plan_of_each_fixture(doc_id: str, expected: list[tuple[str, Action]]) -> None:
    assert plan_fixture(doc_id) == expected


def test_shared_asset_is_one_store_for_two_slots() -> None:
    result = recorded_document("product-shared-a")
    plan = plan_document(parse_document(result, default_mapping()), CDN)
    assert len(plan.assets_to_store()) == 1
    assert plan.count(Action.STORE) == 2


ASSET = Asset(id="image-abc-10x10-jpg", url="https://cdn.sanity.io/images/p/d/abc-10x10.jpg")
SYNCED = Slot(
    field="mainImage",
    asset=ASSET,
    handle="H",
    url="https://cdn.filestackcontent.com/H",
    size=10,
    mime_type="image/jpeg",
    source_asset=ASSET.id,
)


@pytest.mark.parametrize(
    ("slot", "action", "reason_part"),
    [
        (SYNCED, IN, "handle made from"),
        (replace(SYNCED, size=None, mime_type=None), IN, "handle made from"),
        (replace(SYNCED, handle=None), S, "no Filestack handle"),
        (replace(SYNCED, url=None), S, "incomplete"),
        (replace(SYNCED, source_asset=None), S, "unknown origin"),
        (replace(SYNCED, source_asset="image-old-1x1-jpg"), S, "asset replaced"),
        (replace(SYNCED, asset=None), E, "no asset"),
        (
            replace(SYNCED, handle=None, is_array_item=True, key=None),
            B,
            "no _key",
        ),
        (replace(SYNCED, handle=None, asset=replace(ASSET, url=None)), B, "has no URL"),
        (
            replace(SYNCED, handle=None, asset=replace(ASSET, url="https://evil.example/x.jpg")),
            B,
            "not in CMS_SYNC_ALLOWED_ASSET_HOSTS",
        ),
        (
            replace(SYNCED, handle=None, asset=replace(ASSET, url="http://cdn.sanity.io/x.jpg")),
            B,
            "plain http",
        ),
    ],
)
def test_slot_decisions(slot: Slot, action: Action, reason_part: str) -> None:
    planned = plan_slot(slot, CDN)
    assert planned.action is action
    assert reason_part in planned.reason


@pytest.mark.parametrize(
    ("key", "path"),
    [("a1", 'gallery[_key=="a1"]'), ('we"ird', 'gallery[_key=="we\\"ird"]')],
)
def test_array_item_paths_quote_the_key(key: str, path: str) -> None:
    assert Slot(field="gallery", key=key, is_array_item=True).path == path
