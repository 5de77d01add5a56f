"""Filestack's webhook signature and notifications (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from filestack.helpers import verify_webhook_signature

from cms_sync.errors import SignatureError
from cms_sync.filestack_notices import MalformedNotice, NotOurs, StoreNotice, compute, parse, verify

SECRET = "fs-webhook-secret"
NOW = 1_790_000_000
DATASET = "cmsdemo/production"


def upload(tags: dict[str, str] | None, *, tags_outside: bool = False) -> dict[str, Any]:
    text: dict[str, Any] = {
        "container": "bucket",
        "url": "https://cdn.filestackcontent.com/AbCdEfGhIjKlMnOpQrSt",
        "filename": "a.jpg",
        "client": "Computer",
        "key": "sanity/image-a-10x10-jpg.jpg",
        "type": "image/jpeg",
        "status": "Stored",
        "size": 158584,
    }
    message: dict[str, Any] = {
        "id": 30813791,
        "action": "fp.upload",
        "timestamp": NOW,
        "text": text,
    }
    if tags is not None:
        (message if tags_outside else text)["upload_tags"] = tags
    return message


OURS = {
    "sanity_asset_id": "image-a-10x10-jpg",
    "sanity_document_id": "post-1",
    "sanity_dataset": DATASET,
    "cms_sync_store": "2",
}


@pytest.mark.parametrize(
    "body", [b'{"id":1,"action":"fp.upload"}', '{"a": "\u00e9\u2603"}'.encode()]
)
def test_the_signature_agrees_with_filestack_python(body: bytes) -> None:
    signature = compute(SECRET, body, str(NOW))
    headers = {"FS-Signature": signature, "FS-Timestamp": str(NOW)}
    assert verify_webhook_signature(SECRET, body, headers) == (True, {})
    assert verify(signature, str(NOW), body, SECRET, max_age=300, now=NOW) == NOW


def test_a_wrong_signature_is_refused_without_telling_the_right_one() -> None:
    body = b'{"id":1,"action":"fp.upload"}'
    right = compute(SECRET, body, str(NOW))
    forged = "0" * 64
    ok, details = verify_webhook_signature(
        SECRET, body, {"FS-Signature": forged, "FS-Timestamp": str(NOW)}
    )
    assert not ok and right in details["error"]  # why the SDK's helper is not used
    with pytest.raises(SignatureError) as refused:
        verify(forged, str(NOW), body, SECRET, max_age=300, now=NOW)
    assert right not in str(refused.value)


@pytest.mark.parametrize(
    ("signature", "timestamp", "now", "message"),
    [
        (None, str(NOW), NOW, "missing"),
        ("x" * 64, None, NOW, "missing"),
        ("not-hex", str(NOW), NOW, "malformed"),
        ("a" * 64, "12.5", NOW, "malformed"),
        ("a" * 64, "9" * 40, NOW, "malformed"),
        ("SIGNED", str(NOW - 301), NOW, "301 s away"),  # stale
        ("SIGNED", str(NOW + 301), NOW, "-301 s away"),  # from the future
    ],
)
def test_bad_headers_and_stale_timestamps_are_refused(
    signature: str | None, timestamp: str | None, now: int, message: str
) -> None:
    body = b"{}"
    if signature == "SIGNED":
        assert timestamp is not None
        signature = compute(SECRET, body, timestamp)
    with pytest.raises(SignatureError, match=message):
        verify(signature, timestamp, body, SECRET, max_age=300, now=now)


@pytest.mark.parametrize("outside", [False, True])
def test_an_upload_of_ours_names_the_asset_handle_and_store(outside: bool) -> None:
    notice = parse(json.dumps(upload(OURS, tags_outside=outside)).encode(), dataset=DATASET)
    assert notice == StoreNotice(
        event_id="30813791",
        action="fp.upload",
        asset_id="image-a-10x10-jpg",
        handle="AbCdEfGhIjKlMnOpQrSt",
        url="https://cdn.filestackcontent.com/AbCdEfGhIjKlMnOpQrSt",
        storage_key="sanity/image-a-10x10-jpg.jpg",
        size=158584,
        mime_type="image/jpeg",
        store_number=2,
        document_id="post-1",
        timestamp=float(NOW),
    )


def test_a_stored_conversion_is_read_from_its_link() -> None:
    message = {
        "id": "30814778",
        "action": "fp.converse",
        "timestamp": NOW,
        "text": {
            "url": "/CONVERSION_TASKS/HANDLE",
            "link": {
                "url": "https://www.filestackapi.com/api/file/HANDLE2",
                "handle": "HANDLE2",
                "filename": "a.jpg",
                "mimetype": "image/jpeg",
                "path": "sanity/a.jpg",
                "size": 10,
            },
            "upload_tags": OURS,
        },
    }
    notice = parse(json.dumps(message).encode(), dataset=DATASET)
    assert isinstance(notice, StoreNotice)
    assert (notice.handle, notice.storage_key, notice.mime_type) == (
        "HANDLE2",
        "sanity/a.jpg",
        "image/jpeg",
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"id": 5, "action": "fp.delete", "text": {"url": "https://x/y"}}, "not a store"),
        (upload(None), "no sanity_asset_id upload tag"),
        (upload({"foo": "bar"}), "no sanity_asset_id upload tag"),
        (upload({**OURS, "sanity_dataset": "other/staging"}), "another dataset (other/staging)"),
    ],
)
def test_notifications_that_are_not_ours_say_why(message: dict[str, Any], reason: str) -> None:
    result = parse(json.dumps(message).encode(), dataset=DATASET)
    assert isinstance(result, NotOurs) and reason in result.reason


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"action": "fp.upload"}',
        b'{"id": 1}',
        b'{"id": true, "action": "fp.upload"}',
        b'{"id": 1, "action": "fp.upload", "text": "x"}',
        json.dumps({**upload(OURS), "text": {"upload_tags": OURS, "url": "ftp://x/y"}}).encode(),
        json.dumps(
            {**upload(OURS), "text": {"upload_tags": OURS, "url": "https://x/../"}}
        ).encode(),
        b"[" * 100_000,
    ],
)
def test_malformed_notifications_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedNotice):
        parse(body, dataset=DATASET)
