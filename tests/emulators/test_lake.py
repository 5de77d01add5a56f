"""The Content Lake emulator over its HTTP API, with a plain httpx client (not the worker's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from images import png

from cms_sync.emulators import ContentLake
from fakes import load_fixture

TOKEN = "sk-lake"
API = "https://cmsdemo.api.sanity.io/v2025-02-19/data"


def product(doc_id: str = "product-1", **extra: Any) -> dict[str, Any]:
    return {"_id": doc_id, "_type": "product", "_rev": "r0", "title": "Chair", **extra}


@pytest.fixture
def lake() -> ContentLake:
    docs = [product(), product("drafts.product-1", title="Draft"), product("product-2", stock=1)]
    return ContentLake(documents={d["_id"]: d for d in docs}, token=TOKEN)


@pytest.fixture
def http(lake: ContentLake) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=httpx.MockTransport(lake), headers={"authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


def mutate(http: httpx.Client, *mutations: dict[str, Any], **flags: str) -> httpx.Response:
    return http.post(f"{API}/mutate/production", params=flags, json={"mutations": list(mutations)})


# -- queries ------------------------------------------------------------------------------
def test_a_get_query_takes_json_params_and_sees_published_documents(http: httpx.Client) -> None:
    response = http.get(
        f"{API}/query/production",
        params={"query": "*[_type == $type] | order(_id)._id", "$type": '"product"'},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == ["product-1", "product-2"] and body["query"].startswith("*[")


def test_a_post_query_and_the_raw_perspective_see_drafts(http: httpx.Client) -> None:
    response = http.post(
        f"{API}/query/production",
        params={"perspective": "raw"},
        json={"query": "*[title == $t]._id", "params": {"t": "Draft"}},
    )
    assert response.json()["result"] == ["drafts.product-1"]


@pytest.mark.parametrize(("version", "drafts"), [("v2021-10-21", 1), ("v2025-02-19", 0)])
def test_the_default_perspective_follows_the_api_version(
    http: httpx.Client, version: str, drafts: int
) -> None:
    url = f"https://cmsdemo.api.sanity.io/{version}/data/query/production"
    response = http.get(url, params={"query": 'count(*[_id in path("drafts.**")])'})
    assert response.json()["result"] == drafts


def test_bad_groq_is_a_query_parse_error_with_its_position(http: httpx.Client) -> None:
    recorded = load_fixture("sanity/errors/query-parse.json")["error"]
    response = http.get(f"{API}/query/production", params={"query": recorded["query"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert {k: error[k] for k in ("type", "query", "start", "end")} == {
        k: recorded[k] for k in ("type", "query", "start", "end")
    }


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}"])
def test_every_data_call_needs_the_bearer_token(lake: ContentLake, header: str | None) -> None:
    headers = {"authorization": header} if header else {}
    with httpx.Client(transport=httpx.MockTransport(lake), headers=headers) as client:
        response = client.get(f"{API}/query/production", params={"query": "*"})
    assert response.status_code == 401
    assert response.json() == load_fixture("sanity/errors/unauthorized.json")


def test_another_dataset_is_not_found(http: httpx.Client) -> None:
    response = http.get(f"{API}/query/staging", params={"query": "*"})
    assert response.status_code == 404


def test_the_doc_endpoint_returns_documents_and_names_the_missing(http: httpx.Client) -> None:
    body = http.get(f"{API}/doc/production/product-1,nope").json()
    assert [d["_id"] for d in body["documents"]] == ["product-1"]
    assert body["omitted"] == [{"id": "nope", "reason": "existence"}]


# -- mutations ----------------------------------------------------------------------------
def test_a_transaction_gives_every_changed_document_one_new_revision(
    http: httpx.Client, lake: ContentLake
) -> None:
    response = mutate(
        http,
        {"create": {"_id": "post-1", "_type": "post"}},
        {"patch": {"id": "product-1", "set": {"gallery": []}, "inc": {"stock": 1}}},
        {"createIfNotExists": {"_id": "product-2", "_type": "product"}},
        returnIds="true",
    )
    assert response.status_code == 200
    body = response.json()
    assert body["results"] == [
        {"id": "post-1", "operation": "create"},
        {"id": "product-1", "operation": "update"},
        {"id": "product-2", "operation": "none"},
    ]
    post, chair = lake.documents["post-1"], lake.documents["product-1"]
    assert (
        post["_rev"] == chair["_rev"] == body["transactionId"] and len(body["transactionId"]) == 22
    )
    assert post["_updatedAt"] == chair["_updatedAt"]
    assert lake.documents["product-2"]["_rev"] == "r0"  # untouched


def test_a_failing_mutation_rolls_back_the_whole_transaction(
    http: httpx.Client, lake: ContentLake
) -> None:
    before = json.dumps(lake.documents, sort_keys=True)
    response = mutate(
        http,
        {"patch": {"id": "product-1", "set": {"title": "Table"}}},
        {"create": {"_id": "product-2", "_type": "product"}},
    )
    assert response.status_code == 409
    recorded = load_fixture("sanity/errors/document-exists.json")["error"]
    error = response.json()["error"]
    assert error["type"] == recorded["type"]
    assert error["items"][0]["index"] == 1
    assert error["items"][0]["error"]["type"] == recorded["items"][0]["error"]["type"]
    assert json.dumps(lake.documents, sort_keys=True) == before
    assert not lake.commits and len(lake.mutations) == 1


def test_a_stale_revision_gets_sanitys_409_body(http: httpx.Client, lake: ContentLake) -> None:
    response = mutate(http, {"patch": {"id": "product-1", "ifRevisionID": "old", "set": {"a": 1}}})
    assert response.status_code == 409
    recorded = load_fixture("sanity/errors/revision-mismatch.json")
    body = response.json()
    item = body["error"]["items"][0]["error"]
    assert set(item) == set(recorded["error"]["items"][0]["error"])
    assert (item["currentRevisionID"], item["expectedRevisionID"]) == ("r0", "old")
    assert body["error"]["type"] == recorded["error"]["type"]
    ok = mutate(http, {"patch": {"id": "product-1", "ifRevisionID": "r0", "set": {"a": 1}}})
    assert ok.status_code == 200 and lake.documents["product-1"]["a"] == 1


def test_patch_and_delete_by_query(http: httpx.Client, lake: ContentLake) -> None:
    patched = mutate(
        http, {"patch": {"query": "*[_type == $t]", "params": {"t": "product"}, "set": {"x": 1}}}
    )
    assert {r["id"] for r in patched.json()["results"]} == {
        "product-1",
        "product-2",
        "drafts.product-1",
    }
    mutate(http, {"delete": {"query": '*[_id in path("drafts.**")]'}})
    assert sorted(lake.documents) == ["product-1", "product-2"]
    assert all(d["x"] == 1 for d in lake.documents.values())


def test_return_documents_and_create_or_replace(http: httpx.Client, lake: ContentLake) -> None:
    response = mutate(
        http, {"createOrReplace": {"_id": "product-1", "_type": "product"}}, returnDocuments="true"
    )
    (doc,) = response.json()["documents"]
    assert doc == lake.documents["product-1"] and "title" not in doc


@pytest.mark.parametrize(
    ("mutation", "status"),
    [
        ({"patch": {"id": "nope", "set": {"a": 1}}}, 404),
        ({"patch": {"id": "product-1", "set": {"_type": "post"}}}, 409),
        ({"patch": {"id": "product-1", "diffMatchPatch": {"title": "x"}}}, 400),
        ({"create": {"_id": "x"}}, 400),
        ({"frobnicate": {}}, 400),
    ],
)
def test_invalid_mutations_are_refused(
    http: httpx.Client, lake: ContentLake, mutation: dict[str, Any], status: int
) -> None:
    response = mutate(http, mutation)
    assert response.status_code == status
    assert response.json()["error"]["description"]
    assert not lake.commits


# -- assets -------------------------------------------------------------------------------
def test_asset_urls_resolve_to_their_bytes() -> None:
    lake = ContentLake(token=TOKEN, asset_base="http://127.0.0.1:9")
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (3).to_bytes(4) + (2).to_bytes(4) + b"x"
    asset = lake.add_asset(png, "chair.png")
    assert asset["_id"].startswith("image-") and asset["_id"].endswith("-3x2-png")
    assert asset["url"].startswith("http://127.0.0.1:9/images/cmsdemo/production/")
    with httpx.Client(transport=httpx.MockTransport(lake)) as client:
        got = client.get(asset["url"])
    assert (got.content, got.headers["content-type"]) == (png, "image/png")


def test_exported_assets_without_files_get_bytes_of_their_size() -> None:
    cdn = "https://cdn.sanity.io/files/cmsdemo/production/abc.pdf"
    doc = {"_id": "file-abc-pdf", "_type": "sanity.fileAsset", "url": cdn, "size": 2048}
    doc["mimeType"] = "application/pdf"
    lake = ContentLake(documents={doc["_id"]: doc}, asset_base="http://127.0.0.1:9")
    assert (
        lake.documents["file-abc-pdf"]["url"]
        == "http://127.0.0.1:9/files/cmsdemo/production/abc.pdf"
    )
    with httpx.Client(transport=httpx.MockTransport(lake)) as client:
        got = client.get("http://127.0.0.1:9/files/cmsdemo/production/abc.pdf")
        missing = client.get("http://127.0.0.1:9/files/cmsdemo/production/other.pdf")
    assert len(got.content) == 2048 and got.headers["content-type"] == "application/pdf"
    assert missing.status_code == 404


ASSETS = "https://cmsdemo.api.sanity.io/v2021-06-07/assets"


def test_an_upload_makes_an_asset_an_editor_can_reference(
    http: httpx.Client, lake: ContentLake
) -> None:
    image = png(5, 2, (1, 2, 3))
    answer = http.post(
        f"{ASSETS}/images/production",
        params={"filename": "red.png"},
        content=image,
        headers={"content-type": "image/png"},
    )
    assert answer.status_code == 200
    asset = answer.json()["document"]
    assert asset["_type"] == "sanity.imageAsset" and asset["_id"].endswith("-5x2-png")
    assert (asset["size"], asset["mimeType"], asset["originalFilename"]) == (
        len(image),
        "image/png",
        "red.png",
    )
    assert lake.documents[asset["_id"]] == asset
    path = asset["url"].split("cdn.sanity.io", 1)[1]
    assert lake.asset_bytes(path) == (image, "image/png")
    again = http.post(f"{ASSETS}/images/production", content=image)  # same bytes: same asset
    assert again.json()["document"]["_id"] == asset["_id"]

    pdf = http.post(
        f"{ASSETS}/files/production",
        params={"filename": "spec.pdf"},
        content=b"%PDF-1.4\n%%EOF\n",
        headers={"content-type": "application/pdf"},
    )
    assert pdf.json()["document"]["_type"] == "sanity.fileAsset"


def test_an_upload_needs_the_token_the_dataset_and_an_image(
    http: httpx.Client, lake: ContentLake
) -> None:
    with httpx.Client(transport=httpx.MockTransport(lake)) as nobody:
        anonymous = nobody.post(f"{ASSETS}/images/production", content=png())
    assert anonymous.status_code == 401
    assert http.post(f"{ASSETS}/images/staging", content=png()).status_code == 404
    not_image = http.post(
        f"{ASSETS}/images/production", content=b"text", headers={"content-type": "text/plain"}
    )
    assert not_image.status_code == 400
    assert http.post(f"{ASSETS}/images/production", content=b"").status_code == 400
