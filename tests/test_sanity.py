from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from cms_sync import sanity
from cms_sync.errors import (
    AuthenticationError,
    ConnectError,
    InvalidResponse,
    RateLimited,
    RejectedError,
    ResponseTimeout,
    RevisionConflict,
    TransportError,
    UnavailableError,
)
from cms_sync.sanity import SanityClient
from fakes import load_fixture
from wiring import Sleeps, make_settings, no_wait_policy

pytestmark = pytest.mark.anyio

BASE = "https://cmsdemo.api.sanity.io/v2025-02-19"
QUERY_URL = f"{BASE}/data/query/production"
MUTATE_URL = f"{BASE}/data/mutate/production"
QUERY = "*[_id == $id][0]{_id}"


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(sleeps: Sleeps) -> AsyncIterator[SanityClient]:
    async with sanity.http_client(make_settings()) as http:
        yield SanityClient(http, dataset="production", retry=no_wait_policy(sleeps))


def ok(result: object) -> httpx.Response:
    return httpx.Response(200, json={"ms": 2, "query": QUERY, "result": result})


@respx.mock
async def test_query_is_a_get_with_json_params_and_published_perspective(
    client: SanityClient,
) -> None:
    route = respx.get(QUERY_URL).mock(return_value=ok({"_id": "a"}))
    assert await client.query(QUERY, {"id": 'product-"1', "type0": "product"}) == {"_id": "a"}
    request = route.calls.last.request
    args = parse_qs(request.url.query.decode())
    assert args == {
        "query": [QUERY],
        "perspective": ["published"],
        "$id": ['"product-\\"1"'],
        "$type0": ['"product"'],
    }
    assert request.headers["authorization"] == "Bearer sk-test-token"
    assert request.url.host == "cmsdemo.api.sanity.io"  # api, never apicdn


@respx.mock
async def test_long_query_falls_back_to_post(client: SanityClient) -> None:
    route = respx.post(QUERY_URL, params={"perspective": "published"}).mock(return_value=ok(None))
    long_query = "*[_id == $id][0]{" + ", ".join(f"field{i}" for i in range(2000)) + "}"
    assert await client.query(long_query, {"id": "x"}) is None
    assert json.loads(route.calls.last.request.content) == {
        "query": long_query,
        "params": {"id": "x"},
    }


def test_api_host_setting_replaces_the_project_host() -> None:
    settings = make_settings(sanity_api_host="http://127.0.0.1:8800/")
    assert settings.sanity_base_url == "http://127.0.0.1:8800/v2025-02-19"
    assert make_settings().sanity_base_url == BASE


@pytest.mark.parametrize(
    ("status", "fixture", "error", "error_type"),
    [
        (400, "query-parse", RejectedError, "queryParseError"),
        (401, "unauthorized", AuthenticationError, "Unauthorized"),
        (409, "document-exists", RejectedError, "documentAlreadyExistsError"),
    ],
)
@respx.mock
async def test_rejections_are_not_retried(
    client: SanityClient,
    sleeps: Sleeps,
    status: int,
    fixture: str,
    error: type[Exception],
    error_type: str,
) -> None:
    body = load_fixture(f"sanity/errors/{fixture}.json")
    route = respx.get(QUERY_URL).mock(return_value=httpx.Response(status, json=body))
    with pytest.raises(error) as info:
        await client.query(QUERY, {"id": "x"})
    assert type(info.value) is error
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.error_type == error_type  # type: ignore[attr-defined]
    assert route.call_count == 1 and sleeps.waits == []


@respx.mock
async def test_query_retries_429_honouring_retry_after(
    client: SanityClient, sleeps: Sleeps
) -> None:
    limited = httpx.Response(
        429, json=load_fixture("sanity/errors/rate-limited.json"), headers={"retry-after": "2"}
    )
    route = respx.get(QUERY_URL).mock(side_effect=[limited, limited, ok({"_id": "a"})])
    assert await client.query(QUERY, {"id": "a"}) == {"_id": "a"}
    assert route.call_count == 3
    assert sleeps.waits == [2.0, 2.0]


@respx.mock
async def test_query_gives_up_after_bounded_5xx(client: SanityClient, sleeps: Sleeps) -> None:
    bad = httpx.Response(502, json=load_fixture("sanity/errors/bad-gateway.json"))
    route = respx.get(QUERY_URL).mock(return_value=bad)
    with pytest.raises(UnavailableError, match="HTTP 502 Bad Gateway: An invalid response"):
        await client.query(QUERY, {"id": "a"})
    assert route.call_count == 4
    assert len(sleeps.waits) == 3 and all(0 <= w <= 8 for w in sleeps.waits)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("refused"), ConnectError),
        (httpx.ConnectTimeout("slow"), ConnectError),
        (httpx.ReadTimeout("slow"), ResponseTimeout),
        (httpx.RemoteProtocolError("eof"), TransportError),
    ],
)
@respx.mock
async def test_query_retries_transport_failures(
    client: SanityClient, exc: Exception, error: type[Exception]
) -> None:
    route = respx.get(QUERY_URL).mock(side_effect=exc)
    with pytest.raises(error):
        await client.query(QUERY, {"id": "a"})
    assert route.call_count == 4


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (httpx.Response(200, text="<html>proxy</html>"), "expected JSON"),
        (httpx.Response(200, json={"ms": 1}), "no 'result'"),
        (httpx.Response(200, json=[1, 2]), "no 'result'"),
    ],
)
@respx.mock
async def test_unusable_2xx_is_invalid_response(
    client: SanityClient, response: httpx.Response, match: str
) -> None:
    respx.get(QUERY_URL).mock(return_value=response)
    with pytest.raises(InvalidResponse, match=match):
        await client.query(QUERY, {"id": "a"})


@respx.mock
async def test_oversized_response_is_refused(sleeps: Sleeps) -> None:
    respx.get(QUERY_URL).mock(return_value=httpx.Response(200, content=b"x" * 2048))
    async with sanity.http_client(make_settings()) as http:
        client = SanityClient(
            http, dataset="production", retry=no_wait_policy(sleeps), max_response_bytes=1024
        )
        with pytest.raises(InvalidResponse, match="larger than 1024 bytes"):
            await client.query(QUERY, {"id": "a"})


PATCH = {"patch": {"id": "product-1", "ifRevisionID": "r1", "set": {"a.b": 1}}}


@respx.mock
async def test_mutate_posts_one_transaction_visible_on_return(client: SanityClient) -> None:
    route = respx.post(MUTATE_URL, params={"returnIds": "true", "visibility": "sync"}).mock(
        return_value=httpx.Response(200, json=load_fixture("sanity/mutate/patched.json"))
    )
    result = await client.mutate([PATCH])
    assert result.transaction_id == "Mw8HtQ1PrwnWUvRcVXa6lD"
    assert json.loads(route.calls.last.request.content) == {"mutations": [PATCH]}


@respx.mock
async def test_mutate_revision_mismatch_is_a_conflict_not_retried(client: SanityClient) -> None:
    body = load_fixture("sanity/errors/revision-mismatch.json")
    route = respx.post(MUTATE_URL).mock(return_value=httpx.Response(409, json=body))
    with pytest.raises(RevisionConflict, match="unexpected revision ID") as raised:
        await client.mutate([PATCH])
    assert route.call_count == 1
    assert raised.value.index == body["error"]["items"][0]["index"] == 0


@pytest.mark.parametrize(
    ("body", "index"),
    [
        ({"error": {"items": [{"index": 3, "error": {}}]}}, 3),
        ({"error": {"items": [{"index": "3"}]}}, None),
        ({"error": {"items": [{"index": True}]}}, None),
        ({"error": {"items": []}}, None),
        ({"error": "Conflict", "message": "gateway"}, None),
        (None, None),
    ],
)
def test_the_conflicting_mutation_is_read_from_the_409_when_named(
    body: Any, index: int | None
) -> None:
    assert sanity.conflict_index(body) == index


@respx.mock
async def test_guarded_mutate_retries_429_and_5xx(client: SanityClient, sleeps: Sleeps) -> None:
    route = respx.post(MUTATE_URL).mock(
        side_effect=[
            httpx.Response(429, json=load_fixture("sanity/errors/rate-limited.json")),
            httpx.Response(503, text="upstream down"),
            httpx.Response(200, json=load_fixture("sanity/mutate/patched.json")),
        ]
    )
    await client.mutate([PATCH])
    assert route.call_count == 3


@pytest.mark.parametrize(
    ("exc", "calls", "error"),
    [
        (httpx.ConnectError("refused"), 4, ConnectError),  # never sent: safe
        (httpx.ReadTimeout("slow"), 1, ResponseTimeout),  # may have applied: not retried here
    ],
)
@respx.mock
async def test_mutate_transport_retries_only_when_unsent(
    client: SanityClient, exc: Exception, calls: int, error: type[Exception]
) -> None:
    route = respx.post(MUTATE_URL).mock(side_effect=exc)
    with pytest.raises(error):
        await client.mutate([PATCH])
    assert route.call_count == calls


@respx.mock
async def test_retry_after_is_capped(sleeps: Sleeps) -> None:
    limited = httpx.Response(429, text="slow down", headers={"retry-after": "3600"})
    respx.get(QUERY_URL).mock(side_effect=[limited, ok(None)])
    async with sanity.http_client(make_settings()) as http:
        client = SanityClient(http, dataset="production", retry=no_wait_policy(sleeps))
        await client.query(QUERY, {"id": "a"})
    assert sleeps.waits == [30.0]
    assert isinstance(RateLimited("Sanity", 429, "x", retry_after=1.0), UnavailableError)
