"""The media-slot field table drives the query, the parsing and the write-back."""

from __future__ import annotations

import dataclasses

from cms_sync.document import Asset, Slot, parse_document
from cms_sync.mapping import default_mapping
from cms_sync.media import ASSET, WRITTEN
from cms_sync.mutations import slot_values
from cms_sync.queries import build_document_query
from cms_sync.records import StoredAsset


def test_every_field_of_the_table_is_fetched() -> None:
    text = build_document_query(default_mapping()).text
    assert "asset->{" + ", ".join(f.wire for f in ASSET) + "}" in text
    assert all(f"{f.wire}, " in text for f in WRITTEN)


def test_every_field_of_the_table_is_parsed_into_its_attribute() -> None:
    asset = {f.wire: (7 if f.type is int else f"a-{f.wire}") for f in ASSET}
    slot = {f.wire: (9 if f.type is int else f"w-{f.wire}") for f in WRITTEN}
    result = {"_id": "p", "_type": "post", "_rev": "r", "mainImage": {**slot, "asset": asset}}
    (parsed,) = parse_document(result, default_mapping()).slots
    assert parsed.asset is not None
    assert {f.attr: getattr(parsed.asset, f.attr) for f in ASSET} == {
        f.attr: asset[f.wire] for f in ASSET
    }
    assert {f.attr: getattr(parsed, f.attr) for f in WRITTEN} == {
        f.attr: slot[f.wire] for f in WRITTEN
    }


def test_every_written_field_is_patched_from_the_stored_asset() -> None:
    record = StoredAsset(asset_id="image-a", handle="H", url="U", size=3, mime_type="image/png")
    values = slot_values(record)
    assert list(values) == [f.wire for f in WRITTEN]
    assert values["filestackSourceAsset"] == "image-a" and values["filestackHandle"] == "H"


def test_the_dataclasses_hold_exactly_the_tables_attributes() -> None:
    assert {f.name for f in dataclasses.fields(Asset)} == {f.attr for f in ASSET}
    slot_attrs = {f.name for f in dataclasses.fields(Slot)} - {"field", "key", "is_array_item"}
    assert slot_attrs == {f.attr for f in WRITTEN} | {"asset"}
