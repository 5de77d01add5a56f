from __future__ import annotations

from typing import Any

import pytest

from cms_sync.document import parse_document
from cms_sync.errors import InvalidResponse
from cms_sync.mapping import default_mapping
from fakes import recorded_document


def test_absent_keys_read_like_null_keys() -> None:
    """groq-js keeps null-valued keys; a real API may drop them. Both parse the same."""
    with_nulls = recorded_document("product-1")

    def drop_nulls(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_nulls(v) for v in value]
        return value

    mapping = default_mapping()
    assert parse_document(with_nulls, mapping) == parse_document(drop_nulls(with_nulls), mapping)


@pytest.mark.parametrize(
    "result",
    [
        {"_type": "post", "_rev": "r"},
        {"_id": "post-1", "_type": "post", "_rev": "r", "mainImage": {"filestackSize": "big"}},
        {"_id": "product-1", "_type": "product", "_rev": "r", "gallery": {"not": "a list"}},
    ],
)
def test_unexpected_shapes_are_invalid_responses(result: dict[str, Any]) -> None:
    with pytest.raises(InvalidResponse, match="unexpected shape"):
        parse_document(result, default_mapping())


def test_null_array_items_are_ignored() -> None:
    result = {"_id": "p", "_type": "product", "_rev": "r", "gallery": [None, {"_key": "k"}]}
    doc = parse_document(result, default_mapping())
    assert [s.path for s in doc.slots] == ['gallery[_key=="k"]']
