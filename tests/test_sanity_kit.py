"""The Sanity kit: the webhook definition in deploy/sanity/, its delta-mode filter evaluated
by the GROQ engine over the changes it must and must not fire on, and the Studio schema."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cms_sync.emulators import Webhook
from cms_sync.mapping import default_mapping
from cms_sync.media import HANDLE, MIME_TYPE, SIZE, SOURCE_ASSET, URL
from cms_sync.sanity_kit import PROJECTION, webhook_definition, webhook_filter

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "sanity"


def definition() -> dict[str, Any]:
    return json.loads((DEPLOY / "webhook.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def hook() -> Webhook:
    rule = definition()["rule"]
    return Webhook(
        "http://127.0.0.1/webhooks/sanity",
        filter=rule["filter"],
        projection=rule["projection"],
        on=tuple(rule["on"]),
    )


def fires(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    return hook().message(before, after) is not None


def image(ref: str) -> dict[str, Any]:
    return {"_type": "image", "asset": {"_type": "reference", "_ref": ref}}


def synced(slot: dict[str, Any]) -> dict[str, Any]:
    """The slot as the worker leaves it."""
    ref = slot["asset"]["_ref"]
    return {
        **slot,
        HANDLE: f"h-{ref}",
        URL: f"https://cdn.filestackcontent.com/h-{ref}",
        SIZE: 10,
        MIME_TYPE: "image/jpeg",
        SOURCE_ASSET: ref,
    }


def product(**fields: Any) -> dict[str, Any]:
    doc = {"_id": "product-1", "_type": "product", "_rev": "r1", "title": "Lamp"}
    doc.update(fields)
    return doc


PRODUCT = product(
    mainImage=image("image-a-10x10-jpg"),
    gallery=[{**image("image-b-10x10-jpg"), "_key": "k1"}],
    specSheet={"_type": "file", "asset": {"_type": "reference", "_ref": "file-c-pdf"}},
)


def written_back(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["mainImage"] = synced(out["mainImage"])
    out["gallery"] = [synced(item) for item in out["gallery"]]
    out["specSheet"] = synced(out["specSheet"])
    return out


SYNCED = written_back(PRODUCT)


def test_the_checked_in_definition_is_the_one_built_from_the_default_mapping() -> None:
    assert definition() == webhook_definition(default_mapping())
    assert definition()["rule"]["projection"] == PROJECTION == "{_id, _type, _rev}"
    assert definition()["httpMethod"] == "POST" and definition()["includeDrafts"] is False
    assert definition()["secret"].startswith("<")  # a placeholder, never a real secret


def test_it_fires_on_create_of_each_mapped_type_and_never_for_other_types() -> None:
    assert fires(None, PRODUCT)
    assert fires(None, {"_id": "post-1", "_type": "post", "mainImage": image("image-x-1x1-png")})
    assert fires(None, product(title="no media yet"))
    assert not fires(
        None, {"_id": "author-1", "_type": "author", "image": image("image-y-1x1-png")}
    )
    author = {"_id": "author-1", "_type": "author", "mainImage": image("image-y-1x1-png")}
    assert not fires(author, {**author, "mainImage": image("image-z-1x1-png")})


@pytest.mark.parametrize(
    "change",
    [
        "main image replaced",
        "gallery item added",
        "gallery item replaced",
        "spec sheet added",
        "main image removed",
    ],
)
def test_it_fires_when_an_asset_reference_changes_or_a_slot_is_added(change: str) -> None:
    after = copy.deepcopy(SYNCED)
    if change == "main image replaced":
        after["mainImage"] = {**after["mainImage"], "asset": image("image-n-1x1-png")["asset"]}
    elif change == "gallery item added":
        after["gallery"].append({**image("image-n-1x1-png"), "_key": "k2"})
    elif change == "gallery item replaced":
        after["gallery"][0]["asset"] = image("image-n-1x1-png")["asset"]
    elif change == "spec sheet added":
        del after["specSheet"]
        before = copy.deepcopy(after)
        after["specSheet"] = {"_type": "file", "asset": {"_ref": "file-n-pdf"}}
        assert fires(before, after)
        return
    else:
        del after["mainImage"]
    assert fires(SYNCED, after)


def test_it_fires_when_a_restored_revision_lost_the_filestack_fields() -> None:
    assert fires(SYNCED, PRODUCT)  # every slot's fields gone
    one_lost = copy.deepcopy(SYNCED)
    one_lost["gallery"] = PRODUCT["gallery"]
    assert fires(SYNCED, one_lost)
    main_lost = copy.deepcopy(SYNCED)
    main_lost["mainImage"] = PRODUCT["mainImage"]
    assert fires(SYNCED, main_lost)


def test_it_does_not_fire_on_the_workers_write_back_or_other_edits() -> None:
    assert not fires(PRODUCT, SYNCED)  # the write-back
    partly = copy.deepcopy(PRODUCT)
    partly["mainImage"] = synced(partly["mainImage"])  # one slot written, others failed
    assert not fires(PRODUCT, partly)
    assert not fires(SYNCED, {**SYNCED, "title": "Desk lamp", "_rev": "r2"})
    assert not fires(PRODUCT, {**PRODUCT, "title": "Desk lamp", "_rev": "r2"})


def test_it_does_not_fire_on_delete_or_drafts() -> None:
    assert not fires(SYNCED, None)
    draft = {**PRODUCT, "_id": "drafts.product-1"}
    assert not fires(None, draft)


def test_the_filter_follows_the_mapping() -> None:
    mapping = default_mapping()
    text = webhook_filter(mapping)
    for fields in mapping.types.values():
        for field in fields:
            assert (f"{field.name}[].asset._ref" if field.is_array else f"{field.name}.") in text


def test_the_studio_schema_declares_every_written_field_read_only() -> None:
    schema = (DEPLOY / "schema.ts").read_text(encoding="utf-8")
    for name in (HANDLE, URL, SIZE, MIME_TYPE, SOURCE_ASSET):
        block = re.search(rf"name: '{name}'.*?}}\)", schema, re.S)
        assert block is not None, name
        assert "readOnly: true" in block[0], name
    for name in ("mainImage", "gallery", "specSheet"):
        assert f"name: '{name}'" in schema


def cases() -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """Changes to evaluate with both engines (recorded with groq-js: see the fixture)."""
    replaced, added, lost = copy.deepcopy(SYNCED), copy.deepcopy(SYNCED), copy.deepcopy(SYNCED)
    replaced["mainImage"]["asset"] = image("image-n-1x1-png")["asset"]
    added["gallery"].append({**image("image-n-1x1-png"), "_key": "k2"})
    lost["gallery"] = PRODUCT["gallery"]
    partly = copy.deepcopy(PRODUCT)
    partly["mainImage"] = synced(partly["mainImage"])
    author = {"_id": "author-1", "_type": "author", "mainImage": image("image-y-1x1-png")}
    return {
        "create": (None, PRODUCT),
        "create other type": (None, author),
        "main image replaced": (SYNCED, replaced),
        "gallery item added": (SYNCED, added),
        "restored without fields": (SYNCED, PRODUCT),
        "gallery lost its fields": (SYNCED, lost),
        "write-back": (PRODUCT, SYNCED),
        "partial write-back": (PRODUCT, partly),
        "title edited": (SYNCED, {**SYNCED, "title": "Desk lamp"}),
        "title edited, unsynced": (PRODUCT, {**PRODUCT, "title": "Desk lamp"}),
    }


RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "sanity" / "webhook-filter.json"


def test_the_engine_agrees_with_groq_js_on_every_recorded_change() -> None:
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))
    assert recorded["filter"] == definition()["rule"]["filter"], "re-record: the filter changed"
    assert set(recorded["cases"]) == set(cases())
    for name, case in recorded["cases"].items():
        assert fires(case["before"], case["after"]) is case["groq_js"], name


if __name__ == "__main__":  # the input of fixtures/sanity/record-webhook-filter.mjs
    print(json.dumps({"filter": definition()["rule"]["filter"], "cases": cases()}))
