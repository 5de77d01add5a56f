"""A fetched document's media slots, parsed from the GROQ result at the boundary.

The fields read and written are those of the table in ``media.py``; the dataclasses
here hold them under the table's attribute names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from cms_sync.errors import InvalidResponse
from cms_sync.mapping import MediaField, MediaMapping
from cms_sync.media import ASSET, HANDLE, MIME_TYPE, SIZE, SOURCE_ASSET, URL, WRITTEN, Field

__all__ = ["HANDLE", "MIME_TYPE", "SIZE", "SOURCE_ASSET", "URL", "Asset", "Document", "Slot"]


@dataclass(frozen=True)
class Asset:
    """The Sanity asset document a media slot references."""

    id: str
    url: str | None
    original_filename: str | None = None
    mime_type: str | None = None
    size: int | None = None
    sha1hash: str | None = None
    extension: str | None = None


@dataclass(frozen=True)
class Slot:
    """One media object in a document: a field, or one item of an array field."""

    field: str
    key: str | None = None
    is_array_item: bool = False
    asset: Asset | None = None
    handle: str | None = None
    url: str | None = None
    size: int | None = None
    mime_type: str | None = None
    source_asset: str | None = None

    @property
    def path(self) -> str:
        """JSONMatch path of the media object: ``mainImage`` or ``gallery[_key=="a1"]``."""
        if not self.is_array_item:
            return self.field
        if self.key is None:
            return f"{self.field}[?]"  # not patchable; the planner blocks such slots
        return f"{self.field}[_key=={json.dumps(self.key)}]"


@dataclass(frozen=True)
class Document:
    id: str
    type: str
    rev: str
    updated_at: str | None
    slots: tuple[Slot, ...]


def _model(name: str, fields: tuple[Field, ...], **extra: Any) -> type[pydantic.BaseModel]:
    """A pydantic model reading ``fields`` by their wire names into their attributes."""
    definitions: dict[str, Any] = {
        f.attr: (f.type | None, pydantic.Field(default=None, alias=f.wire)) for f in fields
    }
    return pydantic.create_model(
        name,
        __config__=pydantic.ConfigDict(extra="ignore", populate_by_name=False),
        **definitions,
        **extra,
    )


_AssetModel = _model("_AssetModel", ASSET[1:], id=(str, pydantic.Field(alias="_id")))
_SlotModel = _model(
    "_SlotModel",
    WRITTEN,
    key=(str | None, pydantic.Field(default=None, alias="_key")),
    asset=(_AssetModel | None, None),
)


class _DocumentModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str = pydantic.Field(alias="_id", min_length=1)
    type: str = pydantic.Field(alias="_type", min_length=1)
    rev: str = pydantic.Field(alias="_rev", min_length=1)
    updatedAt: str | None = pydantic.Field(default=None, alias="_updatedAt")


def _slot(field: str, raw: pydantic.BaseModel, *, is_array_item: bool) -> Slot:
    raw_asset = getattr(raw, "asset", None)
    asset = None
    if raw_asset is not None:
        asset = Asset(**{f.attr: getattr(raw_asset, f.attr) for f in ASSET})
    return Slot(
        field=field,
        key=getattr(raw, "key", None) if is_array_item else None,
        is_array_item=is_array_item,
        asset=asset,
        **{f.attr: getattr(raw, f.attr) for f in WRITTEN},
    )


def _field_slots(field: MediaField, value: Any) -> list[Slot]:
    if value is None:
        return []
    if field.is_array:
        if not isinstance(value, list):
            raise ValueError(f"{field.name}: expected an array, got {type(value).__name__}")
        return [
            _slot(field.name, _SlotModel.model_validate(item), is_array_item=True)
            for item in value
            if item is not None
        ]
    return [_slot(field.name, _SlotModel.model_validate(value), is_array_item=False)]


def parse_document(result: Mapping[str, Any], mapping: MediaMapping) -> Document:
    """Parse a query result for a document whose type is in ``mapping``.

    Raises:
        InvalidResponse: the result does not have the shape the query asks for.
    """
    try:
        base = _DocumentModel.model_validate(result)
        slots: list[Slot] = []
        for field in mapping.types.get(base.type, ()):
            slots.extend(_field_slots(field, result.get(field.name)))
    except pydantic.ValidationError as exc:
        # Where and what, never the input value: that is upstream text.
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidResponse(
            "Sanity", 200, f"query result has an unexpected shape: {where}: {first['msg']}"
        ) from exc
    except ValueError as exc:
        raise InvalidResponse(
            "Sanity", 200, f"query result has an unexpected shape: {exc}"
        ) from exc
    return Document(
        id=base.id, type=base.type, rev=base.rev, updated_at=base.updatedAt, slots=tuple(slots)
    )
