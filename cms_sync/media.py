"""The media slot, written once: which fields are read from a slot and its asset, and
which are written back.

One table drives the GROQ projection (``queries.py``), the parsing of a fetched document
(``document.py``) and the values of the write-back patch (``mutations.py``). A field added
here is fetched, parsed and, for a written field, patched, with no other edit than the
attribute on the dataclass it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One field: its name in Sanity's JSON, and the attribute it is parsed into."""

    wire: str
    attr: str
    type: type[str] | type[int] = str
    #: For a written field: the ``StoredAsset`` attribute its value comes from.
    stored: str | None = None


#: Read from the referenced asset document (``asset->{...}``).
ASSET = (
    Field("_id", "id"),
    Field("url", "url"),
    Field("originalFilename", "original_filename"),
    Field("mimeType", "mime_type"),
    Field("size", "size", int),
    Field("sha1hash", "sha1hash"),
    Field("extension", "extension"),
)

#: Written onto the media object by the worker, and read back to tell what is in sync.
WRITTEN = (
    Field("filestackHandle", "handle", stored="handle"),
    Field("filestackUrl", "url", stored="url"),
    Field("filestackSize", "size", int, stored="size"),
    Field("filestackMimeType", "mime_type", stored="mime_type"),
    # The Sanity asset the handle was made from: how a replaced image is noticed.
    Field("filestackSourceAsset", "source_asset", stored="asset_id"),
)

HANDLE, URL, SIZE, MIME_TYPE, SOURCE_ASSET = (f.wire for f in WRITTEN)
