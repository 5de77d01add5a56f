"""A fetched document's media slots, parsed from the GROQ result at the boundary.

Field names written onto each media object (image/file field or array item):
``filestackHandle``, ``filestackUrl``, ``filestackSize``, ``filestackMimeType``, and
``filestackSourceAsset``: the Sanity asset id the handle was made from, so that an
editor replacing the image is noticed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from cms_sync.errors import InvalidResponse
from cms_sync.mapping import MediaField, MediaMapping

HANDLE = "filestackHandle"
URL = "filestackUrl"
SIZE = "filestackSize"
MIME_TYPE = "filestackMimeType"
SOURCE_ASSET = "filestackSourceAsset"

SLOT_FIELDS = (HANDLE, URL, SIZE, MIME_TYPE, SOURCE_ASSET)
ASSET_FIELDS = ("_id", "url", "originalFilename", "mimeType", "size", "sha1hash", "extension")


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


class _AssetModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    id: str = pydantic.Field(alias="_id")
    url: str | None = None
    originalFilename: str | None = None
    mimeType: str | None = None
    size: int | None = None
    sha1hash: str | None = None
    extension: str | None = None


class _SlotModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    key: str | None = pydantic.Field(default=None, alias="_key")
    filestackHandle: str | None = None
    filestackUrl: str | None = None
    filestackSize: int | None = None
    filestackMimeType: str | None = None
    filestackSourceAsset: str | None = None
    asset: _AssetModel | None = None


class _DocumentModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str = pydantic.Field(alias="_id", min_length=1)
    type: str = pydantic.Field(alias="_type", min_length=1)
    rev: str = pydantic.Field(alias="_rev", min_length=1)
    updatedAt: str | None = pydantic.Field(default=None, alias="_updatedAt")


def _slot(field: str, raw: _SlotModel, *, is_array_item: bool) -> Slot:
    asset = None
    if raw.asset is not None:
        a = raw.asset
        asset = Asset(
            id=a.id,
            url=a.url,
            original_filename=a.originalFilename,
            mime_type=a.mimeType,
            size=a.size,
            sha1hash=a.sha1hash,
            extension=a.extension,
        )
    return Slot(
        field=field,
        key=raw.key if is_array_item else None,
        is_array_item=is_array_item,
        asset=asset,
        handle=raw.filestackHandle,
        url=raw.filestackUrl,
        size=raw.filestackSize,
        mime_type=raw.filestackMimeType,
        source_asset=raw.filestackSourceAsset,
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
