from __future__ import annotations

import pytest

from cms_sync.groq import evaluate
from cms_sync.mapping import default_mapping, mapping_from_data
from cms_sync.queries import build_document_query
from fakes import FIXTURES, FakeContentLake, load_fixture

RECORDED = sorted(p.stem for p in (FIXTURES / "sanity" / "query").glob("*.json"))
ASSET = "asset->{_id, url, originalFilename, mimeType, size, sha1hash, extension}"
SLOT = "filestackHandle, filestackUrl, filestackSize, filestackMimeType, filestackSourceAsset"


@pytest.mark.parametrize(
    ("media", "expected_branch"),
    [
        (["mainImage"], f"_type == $type0 => {{mainImage{{{SLOT}, {ASSET}}}}}"),
        (["gallery[]"], f"_type == $type0 => {{gallery[]{{_key, {SLOT}, {ASSET}}}}}"),
        (
            ["hero", "files[]"],
            f"_type == $type0 => {{hero{{{SLOT}, {ASSET}}}, files[]{{_key, {SLOT}, {ASSET}}}}}",
        ),
    ],
)
def test_query_text_per_media_spec(media: list[str], expected_branch: str) -> None:
    query = build_document_query(mapping_from_data({"types": {"article": {"media": media}}}))
    assert query.text == f"*[_id in $ids]{{_id, _type, _rev, _updatedAt, {expected_branch}}}"
    assert dict(query.type_params) == {"type0": "article"}


def test_ids_and_types_are_params_never_query_text() -> None:
    mapping = mapping_from_data({"types": {"product": {"media": ["x"]}, "post": {"media": ["y"]}}})
    query = build_document_query(mapping)
    hostile = 'product-1"] | *[true'
    params = query.params([hostile])
    assert params == {"ids": [hostile], "type0": "product", "type1": "post"}
    assert "product" not in query.text and "post" not in query.text
    assert "$type0" in query.text and "$type1" in query.text


def test_recordings_are_of_the_current_query() -> None:
    """The groq-js recordings are only evidence while they are of the query we send."""
    text = build_document_query(default_mapping()).text
    stale = [
        name for name in RECORDED if load_fixture(f"sanity/query/{name}.json")["query"] != text
    ]
    assert not stale, "query builder changed: re-record with fixtures/sanity/record.mjs"


@pytest.mark.parametrize("doc_id", RECORDED)
def test_the_worker_query_evaluates_as_in_groq_js(doc_id: str) -> None:
    """The engine (and so the fake Content Lake) answers the worker's query as groq-js."""
    recorded = load_fixture(f"sanity/query/{doc_id}.json")
    query = build_document_query(default_mapping())
    lake = FakeContentLake.from_fixtures()
    assert lake.query(recorded["query"], query.params([doc_id])) == recorded["result"]


def test_the_built_query_is_checked_by_the_parser() -> None:
    """Names that read as other GROQ (keywords aside) still make a query that parses."""
    mapping = mapping_from_data(
        {"types": {"article": {"media": ["select", "desc", "in[]", "match", "order"]}}}
    )
    query = build_document_query(mapping)
    doc = {"_id": "x", "_type": "article", "desc": {"asset": None}, "in": [{"_key": "k"}]}
    (result,) = evaluate(query.text, [doc], query.params(["x"]))
    assert result["desc"]["asset"] is None
    assert [item["_key"] for item in result["in"]] == ["k"]
    assert result["select"] is None
