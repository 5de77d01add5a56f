from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import filestack as sdk
import httpx
import pytest
import respx
from pydantic import SecretStr

from cms_sync import filestack
from cms_sync.errors import (
    AuthenticationError,
    ConnectError,
    InvalidResponse,
    RejectedError,
    ResponseTimeout,
    TransportError,
    UnavailableError,
)
from cms_sync.filestack import FilestackClient, check_tags, parse_store_response
from fakes import FIXTURES, load_fixture
from servers import serve
from wiring import Sleeps, make_settings, no_wait_policy

PROCESS = "https://cdn.filestackcontent.com/process"
SOURCE = "https://cdn.sanity.io/images/cmsdemo/production/abc-10x10.jpg"
TAGS = {"sanity_document_id": "product-1", "sanity_asset_id": "image-abc-10x10-jpg"}
NOW = 1_800_000_000


def make_client(
    http: httpx.AsyncClient, *, secret: str | None = None, sleeps: Sleeps | None = None
) -> FilestackClient:
    return FilestackClient(
        http,
        api_key="fs-test-key",
        process_url=PROCESS,
        path="sanity/",
        app_secret=SecretStr(secret) if secret else None,
        retry=no_wait_policy(sleeps),
        clock=lambda: NOW,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with filestack.http_client(make_settings()) as client:
        yield client


def test_store_body_matches_the_documented_contract() -> None:
    client = make_client(httpx.AsyncClient(), secret="app-secret")
    body = client.store_body(SOURCE, filename="hero.jpg", tags=TAGS)
    policy = body["tasks"][1]["params"]["policy"]
    assert body == {
        "apikey": "fs-test-key",
        "sources": [SOURCE],
        "tasks": [
            {
                "name": "store",
                "params": {"location": "S3", "filename": "hero.jpg", "path": "sanity/"},
            },
            {
                "name": "security",
                "params": {
                    "policy": policy,
                    "signature": sdk.Security(
                        json.loads(base64.urlsafe_b64decode(policy)), "app-secret"
                    ).signature,
                },
            },
        ],
        "upload_tags": TAGS,
    }
    assert json.loads(base64.urlsafe_b64decode(policy)) == {"call": ["store"], "expiry": NOW + 300}


@pytest.mark.parametrize(
    ("folder", "asset_id", "extension", "key"),
    [
        ("sanity/", "image-abc-10x10-jpg", "jpg", "sanity/image-abc-10x10-jpg.jpg"),
        ("sanity", "file-abc-pdf", "pdf", "sanity/file-abc-pdf.pdf"),
        (None, "image-abc-10x10-jpg", "jpg", "image-abc-10x10-jpg.jpg"),
        ("sanity/", "image-abc", None, "sanity/image-abc"),
        ("sanity/", "../../etc/passwd", "j/pg", "sanity/.._.._etc_passwd.jpg"),
    ],
)
def test_every_asset_has_one_storage_key(
    folder: str | None, asset_id: str, extension: str | None, key: str
) -> None:
    client = FilestackClient(httpx.AsyncClient(), api_key="k", process_url=PROCESS, path=folder)
    assert client.storage_key(asset_id, extension) == key
    body = client.store_body(SOURCE, filename=None, tags={}, key=key)
    assert body["tasks"][0]["params"]["path"] == key


@pytest.mark.anyio
async def test_a_whole_store_ends_within_its_deadline() -> None:
    """Retries and slow answers included: the call as a whole is bounded."""
    never = asyncio.Event()

    async def stall(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(stall)) as http:
        client = FilestackClient(http, api_key="k", process_url=PROCESS, deadline=0.05)
        with pytest.raises(ResponseTimeout, match=r"not answered within 0.05 s"):
            await client.store_url(SOURCE, filename=None, tags={})


def test_security_vector_from_the_wire_facts() -> None:
    security = sdk.Security({"expires": 123}, "secret")
    assert security.policy_b64 == "eyJleHBpcmVzIjogMTIzfQ=="
    assert security.signature == "379d2ba0d5be34eddf09f873b7f38643dc51599b0afcd564f52733b52d698748"


def test_no_security_task_without_an_app_secret() -> None:
    body = make_client(httpx.AsyncClient()).store_body(SOURCE, filename=None, tags={})
    assert body["tasks"] == [{"name": "store", "params": {"location": "S3", "path": "sanity/"}}]
    assert "upload_tags" not in body


@pytest.mark.parametrize(
    "tags",
    [
        {f"k{i}": "v" for i in range(11)},
        {"k" * 129: "v"},
        {"k": "v" * 257},
        {"": "v"},
    ],
)
def test_upload_tags_outside_filestack_limits_are_refused(tags: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="upload tag"):
        check_tags(tags)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (load_fixture("filestack/store.json"), ("Z3yKq8xTQWy3vGgq2aBc", 20222, "image/jpeg")),
        ({"handle": "h", "url": "u", "mimetype": "image/png"}, ("h", None, "image/png")),
        ({"handle": "h", "url": "u", "size": True, "type": 5}, ("h", None, None)),
    ],
)
def test_store_response_reads_type_or_mimetype(
    body: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    stored = parse_store_response(body, status=200)
    assert (stored.handle, stored.size, stored.mime_type) == expected


@pytest.mark.anyio
@respx.mock
async def test_store_returns_the_handle(http: httpx.AsyncClient) -> None:
    route = respx.post(PROCESS).mock(
        return_value=httpx.Response(200, json=load_fixture("filestack/store.json"))
    )
    stored = await make_client(http).store_url(SOURCE, filename="hero.jpg", tags=TAGS)
    assert stored.url == "https://cdn.filestackcontent.com/Z3yKq8xTQWy3vGgq2aBc"
    assert route.calls.last.request.headers["content-type"] == "application/json"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "error", "match"),
    [
        (
            httpx.Response(
                200, text=(FIXTURES / "filestack/invalid-application-200.txt").read_text()
            ),
            InvalidResponse,
            "expected JSON, got: Invalid Application",
        ),
        (httpx.Response(200, json={"url": "u"}), InvalidResponse, "no handle"),
        (httpx.Response(200, json={"handle": "h"}), InvalidResponse, "no url"),
        (
            httpx.Response(
                403, text=(FIXTURES / "filestack/invalid-application-403.txt").read_text()
            ),
            AuthenticationError,
            "HTTP 403 Forbidden: storage provider error: Invalid Application",
        ),
        (
            httpx.Response(401, json=load_fixture("filestack/invalid-policy.json")),
            AuthenticationError,
            "Invalid App policy",
        ),
        (
            httpx.Response(400, text="Invalid URL"),
            RejectedError,
            "HTTP 400 Bad Request: Invalid URL",
        ),
        (httpx.Response(503, text="busy"), UnavailableError, "HTTP 503"),
        (httpx.Response(429, text="slow down"), UnavailableError, "HTTP 429"),
    ],
)
@respx.mock
async def test_store_errors_are_never_retried_once_sent(
    http: httpx.AsyncClient, response: httpx.Response, error: type[Exception], match: str
) -> None:
    route = respx.post(PROCESS).mock(return_value=response)
    with pytest.raises(error, match=match):
        await make_client(http).store_url(SOURCE, filename=None, tags={})
    assert route.call_count == 1  # a store is not idempotent


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "error", "calls"),
    [
        (httpx.ConnectError("refused"), ConnectError, 4),
        (httpx.PoolTimeout("pool"), ConnectError, 4),
        (httpx.ReadTimeout("slow"), ResponseTimeout, 1),
        (httpx.WriteTimeout("slow"), ResponseTimeout, 1),
        (httpx.ReadError("reset"), TransportError, 1),
    ],
)
@respx.mock
async def test_store_is_retried_only_when_never_sent(
    http: httpx.AsyncClient, exc: Exception, error: type[Exception], calls: int
) -> None:
    route = respx.post(PROCESS).mock(side_effect=exc)
    with pytest.raises(error):
        await make_client(http).store_url(SOURCE, filename=None, tags={})
    assert route.call_count == calls


@pytest.mark.anyio
@respx.mock
async def test_connect_failure_then_success_stores_once(http: httpx.AsyncClient) -> None:
    route = respx.post(PROCESS).mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, json=load_fixture("filestack/store.json")),
        ]
    )
    stored = await make_client(http).store_url(SOURCE, filename=None, tags={})
    assert stored.handle == "Z3yKq8xTQWy3vGgq2aBc" and route.call_count == 2


def _recording_handler(bodies: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=load_fixture("filestack/store.json"))

    return handle


@pytest.mark.anyio
@pytest.mark.parametrize("secret", [None, "app-secret"])
async def test_request_body_equals_filestack_python_upload_url(
    monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    """Drive the real SDK and our client at one local server; compare what they send."""
    bodies: list[dict[str, Any]] = []
    with serve(_recording_handler(bodies)) as (base, _requests):
        monkeypatch.setattr(type(sdk.models.client.config), "CDN_URL", base)
        security = None
        if secret:
            security = sdk.Security({"expiry": NOW + 300, "call": ["store"]}, secret)
        sdk_client = sdk.Client("fs-test-key")
        # The SDK's Client.upload_url is synchronous (requests); run it as the SDK user would.
        link = sdk_client.upload_url(
            SOURCE,
            store_params={"filename": "hero.jpg", "path": "sanity/image-abc-10x10-jpg.jpg"},
            security=security,
        )
        assert link.handle == "Z3yKq8xTQWy3vGgq2aBc"

        async with filestack.http_client(make_settings()) as http:
            ours = FilestackClient(
                http,
                api_key="fs-test-key",
                process_url=f"{base}/process",
                path="sanity/",
                app_secret=SecretStr(secret) if secret else None,
                clock=lambda: NOW,
            )
            key = ours.storage_key("image-abc-10x10-jpg", "jpg")
            await ours.store_url(SOURCE, filename="hero.jpg", tags=TAGS, key=key)

    sdk_body, our_body = bodies
    # The storage key: the store task's path, without a trailing "/", is the exact key.
    assert our_body["tasks"][0]["params"]["path"] == "sanity/image-abc-10x10-jpg.jpg"
    # The SDK drops upload_tags from store params; ours sends them top-level as filestack-js does.
    assert our_body.pop("upload_tags") == TAGS
    assert our_body == sdk_body
