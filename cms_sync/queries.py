"""Build the one GROQ query that fetches a document's media slots.

The query text depends only on the mapping; the document id and the type names go in
as ``$params`` (``$id``, ``$type0``, ``$type1``...), never spliced into the text. Field
names are spliced, which is why the mapping accepts plain identifiers only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cms_sync.errors import ConfigError
from cms_sync.groq import GroqSyntaxError, parse
from cms_sync.mapping import MediaField, MediaMapping
from cms_sync.media import ASSET, WRITTEN


@dataclass(frozen=True)
class DocumentQuery:
    """A GROQ query text plus the params it needs besides ``$id``."""

    text: str
    type_params: Mapping[str, str]

    def params(self, document_id: str) -> dict[str, str]:
        return {"id": document_id, **self.type_params}


def asset_projection() -> str:
    return "asset->{" + ", ".join(f.wire for f in ASSET) + "}"


def slot_projection(field: MediaField) -> str:
    """``mainImage{filestackHandle, ..., asset->{...}}`` or ``gallery[]{_key, ...}``."""
    inner = ", ".join(f.wire for f in WRITTEN) + ", " + asset_projection()
    if field.is_array:
        return f"{field.name}[]{{_key, {inner}}}"
    return f"{field.name}{{{inner}}}"


def build_document_query(mapping: MediaMapping) -> DocumentQuery:
    """One query for a document of any mapped type, by id, checked by the GROQ parser.

    The base fields are always returned; each type's media slots come from a
    conditional projection on ``_type == $typeN``.

    Raises:
        ConfigError: the mapping makes a query that does not parse.
    """
    branches: list[str] = []
    type_params: dict[str, str] = {}
    for index, (type_name, fields) in enumerate(mapping.types.items()):
        param = f"type{index}"
        type_params[param] = type_name
        slots = ", ".join(slot_projection(field) for field in fields)
        branches.append(f"_type == ${param} => {{{slots}}}")
    text = "*[_id == $id][0]{_id, _type, _rev, _updatedAt, " + ", ".join(branches) + "}"
    try:
        parse(text)
    except GroqSyntaxError as exc:  # a mapping the validation above let through
        raise ConfigError(f"the media mapping gives an invalid query: {exc}") from None
    return DocumentQuery(text=text, type_params=MappingProxyType(type_params))
