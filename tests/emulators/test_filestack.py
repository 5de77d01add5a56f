"""The Filestack emulator's store contract, with sources fetched over real sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cms_sync.emulators import ContentLake, Filestack, bind, serve
from cms_sync.emulators.filestack import REFUSE_PATH

PDF = b"%PDF-1.4\n% a tiny test file\n%%EOF\n"


@pytest.fixture
def world() -> Iterator[tuple[ContentLake, str, str, Filestack]]:
    sock = bind()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    lake = ContentLake(asset_base=base)
    fs = Filestack(api_key="k", app_secret="secret")
    with serve(lake, sock), serve(fs) as (fs_url, _):
        yield lake, base, fs_url, fs
    fs.close()


def security(secret: str, **policy: Any) -> dict[str, str]:
    encoded = base64.urlsafe_b64encode(json.dumps(policy).encode()).decode()
    sig = hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).hexdigest()
    return {"policy": encoded, "signature": sig}


def store(
    url: str, source: str, *, key: str = "k", path: str = "", secret: str = "secret"
) -> httpx.Response:
    tasks: list[dict[str, Any]] = [{"name": "store", "params": {"location": "S3", "path": path}}]
    tasks.append(
        {"name": "security", "params": security(secret, expiry=time.time() + 60, call=["store"])}
    )
    body = {"apikey": key, "sources": [source], "tasks": tasks, "upload_tags": {"a": "b"}}
    return httpx.post(f"{url}/process", json=body, timeout=10)


def test_a_store_fetches_the_source_and_serves_the_bytes(world: Any) -> None:
    lake, _, fs_url, fs = world
    asset = lake.add_asset(PDF, "spec.pdf")
    answer = store(fs_url, asset["url"], path="sanity/file-1.pdf")
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"container", "filename", "handle", "key", "size", "type", "url"}
    assert (body["size"], body["type"], body["key"]) == (
        len(PDF),
        "application/pdf",
        "sanity/file-1.pdf",
    )
    assert len(body["handle"]) == 20 and body["url"] == f"{fs_url}/{body['handle']}"
    assert httpx.get(body["url"]).content == PDF
    assert fs.files[body["handle"]].upload_tags == {"a": "b"}


def test_a_full_path_is_one_key_and_a_folder_gets_a_new_one(world: Any) -> None:
    lake, _, fs_url, fs = world
    asset = lake.add_asset(PDF, "spec.pdf")
    first = store(fs_url, asset["url"], path="sanity/a.pdf").json()
    again = store(fs_url, asset["url"], path="sanity/a.pdf").json()
    assert first["key"] == again["key"] and first["handle"] != again["handle"]
    assert fs.objects == {"sanity/a.pdf": again["handle"]}  # overwritten, not added
    folder = [store(fs_url, asset["url"], path="sanity/").json()["key"] for _ in range(2)]
    assert folder[0] != folder[1] and all(k.startswith("sanity/") for k in folder)


@pytest.mark.parametrize(
    ("change", "status"),
    [({"key": "wrong"}, 403), ({"secret": "forged"}, 403)],
)
def test_the_key_and_the_policy_are_checked(
    world: Any, change: dict[str, str], status: int
) -> None:
    lake, _, fs_url, fs = world
    asset = lake.add_asset(PDF, "spec.pdf")
    assert store(fs_url, asset["url"], **change).status_code == status
    assert not fs.stores


def test_an_expired_policy_or_one_not_for_store_is_refused() -> None:
    fs = Filestack(
        api_key="k",
        app_secret="s",
        source_transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    for policy in (
        {"expiry": time.time() - 1, "call": ["store"]},
        {"expiry": time.time() + 60, "call": ["read"]},
    ):
        tasks = [
            {"name": "store", "params": {}},
            {"name": "security", "params": security("s", **policy)},
        ]
        request = httpx.Request(
            "POST",
            "https://fs/process",
            json={"apikey": "k", "sources": ["https://x/a"], "tasks": tasks},
        )
        assert fs(request).status_code == 403


def test_sources_off_this_machine_are_not_fetched(world: Any) -> None:
    _, _, fs_url, fs = world
    answer = store(fs_url, "https://cdn.sanity.io/images/p/d/a.jpg")
    assert answer.status_code == 400 and "loopback" in answer.text and not fs.stores
    missing = store(fs_url, f"{world[1]}/images/cmsdemo/production/missing.png")
    assert missing.status_code == 400 and "404" in missing.text


def test_a_transformation_url_serves_the_stored_file(world: Any) -> None:
    lake, _, fs_url, _ = world
    asset = lake.add_asset(PDF, "spec.pdf")
    handle = store(fs_url, asset["url"], path="sanity/spec.pdf").json()["handle"]
    resized = httpx.get(f"{fs_url}/resize=width:160/{handle}", timeout=5)
    assert resized.status_code == 200 and resized.content == PDF
    assert httpx.get(f"{fs_url}/resize=width:160/output=format:png/{handle}").status_code == 200
    assert httpx.get(f"{fs_url}/not-a-task/{handle}").status_code == 404
    assert httpx.get(f"{fs_url}/resize=width:160/NoSuchHandle").status_code == 404


def test_a_running_emulator_can_be_told_to_refuse_sources(world: Any) -> None:
    lake, _, fs_url, fs = world
    asset = lake.add_asset(PDF, "spec.pdf")
    control = f"{fs_url}{REFUSE_PATH}"
    assert httpx.put(control, json={"sources": [asset["url"]]}).json() == {
        "sources": [asset["url"]]
    }
    refused = store(fs_url, asset["url"], path="sanity/spec.pdf")
    assert refused.status_code == 400 and "Invalid URL" in refused.text
    assert fs.stores == []
    assert httpx.get(control).json() == {"sources": [asset["url"]]}
    assert httpx.put(control, json={"sources": "not a list"}).status_code == 400
    assert httpx.put(control, json={"sources": []}).json() == {"sources": []}
    assert store(fs_url, asset["url"], path="sanity/spec.pdf").status_code == 200
