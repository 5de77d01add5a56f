"""Build the one GROQ query that fetches documents' media slots, for one or many ids.

The query text depends only on the mapping; the document ids and the type names go in
as ``$params`` (``$ids``, ``$type0``, ``$type1``...), never spliced into the text. Field
names are spliced, which is why the mapping accepts plain identifiers only. The worker
reads many documents at once (``*[_id in $ids]``), so the same text serves one id or fifty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cms_sync.errors import ConfigError
from cms_sync.groq import GroqSyntaxError, parse
from cms_sync.mapping import MediaField, MediaMapping
from cms_sync.media import ASSET, WRITTEN


@dataclass(frozen=True)
class DocumentQuery:
    """A GROQ query text plus the params it needs besides ``$ids``."""

    text: str
    type_params: Mapping[str, str]

    def params(self, document_ids: Sequence[str]) -> dict[str, str | list[str]]:
        return {"ids": list(document_ids), **self.type_params}


def asset_projection() -> str:
    return "asset->{" + ", ".join(f.wire for f in ASSET) + "}"


def slot_projection(field: MediaField) -> str:
    """``mainImage{filestackHandle, ..., asset->{...}}`` or ``gallery[]{_key, ...}``."""
    inner = ", ".join(f.wire for f in WRITTEN) + ", " + asset_projection()
    if field.is_array:
        return f"{field.name}[]{{_key, {inner}}}"
    return f"{field.name}{{{inner}}}"


def build_document_query(mapping: MediaMapping) -> DocumentQuery:
    """One query for documents of any mapped type, by ids, checked by the GROQ parser.

    It answers a list: the published documents with those ids (in no particular order;
    an id with no document is left out).

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
    text = "*[_id in $ids]{_id, _type, _rev, _updatedAt, " + ", ".join(branches) + "}"
    try:
        parse(text)
    except GroqSyntaxError as exc:  # a mapping the validation above let through
        raise ConfigError(f"the media mapping gives an invalid query: {exc}") from None
    return DocumentQuery(text=text, type_params=MappingProxyType(type_params))
