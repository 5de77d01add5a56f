from __future__ import annotations

import calendar
import json

import pytest

from cms_sync.deliveries import DocumentEvent, parse_delivery, parse_timestamp
from cms_sync.errors import MalformedDelivery
from cms_sync.mapping import default_mapping

MAPPING = default_mapping()
WHEN = "2026-11-20T10:00:00.500Z"
T = calendar.timegm((2026, 11, 20, 10, 0, 0)) + 0.5


def parse(body: object, **headers: str):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_delivery(raw, {k.replace("_", "-"): v for k, v in headers.items()}, MAPPING)


@pytest.mark.parametrize(
    ("body", "headers", "events", "ignored"),
    [
        ({"_id": "product-1", "_type": "product", "_rev": "r"}, {}, [("product-1", None)], []),
        ({"_id": "post-1"}, {"sanity_operation": "create"}, [("post-1", "create")], []),
        (
            {},
            {"sanity_document_id": "post-2", "sanity_operation": "update"},
            [("post-2", "update")],
            [],
        ),
        (
            {"_id": "p", "_type": "product", "title": "whole doc", "gallery": []},
            {},
            [("p", None)],
            [],
        ),
        ({"_id": "drafts.p", "_type": "product"}, {}, [], ["drafts.p"]),
        ({"_id": "versions.r1.p", "_type": "product"}, {}, [], ["versions.r1.p"]),
        ({"_id": "p", "_type": "product"}, {"sanity_operation": "delete"}, [], ["p"]),
        ({"_id": "about", "_type": "page"}, {}, [], ["about"]),
        (
            {
                "ids": {
                    "created": ["a"],
                    "updated": ["b", "a", "drafts.c"],
                    "deleted": ["d"],
                    "all": [],
                }
            },
            {},
            [("a", "create"), ("b", "update")],
            ["drafts.c", "d"],
        ),
        ({"transactionId": "tx", "ids": {"updated": ["b"]}}, {}, [("b", "update")], []),
    ],
)
def test_both_body_shapes(
    body: object, headers: dict[str, str], events: list[tuple[str, str]], ignored: list[str]
) -> None:
    delivery = parse(body, **headers)
    assert [(e.document_id, e.operation) for e in delivery.events] == events
    assert [doc_id for doc_id, _ in delivery.ignored] == ignored


def test_reasons_are_given_for_ignored_ids() -> None:
    delivery = parse({"_id": "about", "_type": "page"})
    assert delivery.ignored == (("about", "type 'page' is not in the media mapping"),)


def test_headers_carry_key_and_transaction_time() -> None:
    delivery = parse({"_id": "p"}, idempotency_key="msg-1", sanity_transaction_time=WHEN)
    assert delivery.idempotency_key == "msg-1"
    assert delivery.events == (DocumentEvent("p", None, T),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"{}", "no document id"),
        (b'{"_id": 5}', "no document id"),
        (b'{"_id": "  "}', "no document id"),
        (b'{"ids": {"created": [], "updated": []}}', "no document id"),
        (b'{"ids": {"updated": "p"}}', "'ids.updated' is not a list"),
        (b'{"ids": []}', "'ids' is not an object"),
    ],
)
def test_malformed_deliveries(body: bytes, message: str) -> None:
    with pytest.raises(MalformedDelivery, match=message):
        parse(body)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (WHEN, T),
        ("2026-11-20T10:00:00+00:00", T - 0.5),
        ("2026-11-20T10:00:00", None),
        ("x", None),
        (None, None),
    ],
)
def test_parse_timestamp(value: str | None, seconds: float | None) -> None:
    assert parse_timestamp(value) == seconds
