from __future__ import annotations

import calendar
import json

import pytest

from cms_sync.deliveries import id_problem, parse_delivery
from cms_sync.errors import DeliveryTooLarge, MalformedDelivery
from cms_sync.jobs import JobRequest, JobSource
from cms_sync.mapping import default_mapping
from cms_sync.timestamps import parse_timestamp

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
    assert [(e.document_id, e.operation) for e in delivery.requests] == events
    assert [doc_id for doc_id, _ in delivery.ignored] == ignored


def test_reasons_are_given_for_ignored_ids() -> None:
    delivery = parse({"_id": "about", "_type": "page"})
    assert delivery.ignored == (("about", "type 'page' is not in the media mapping"),)


def test_headers_carry_key_and_transaction_time() -> None:
    delivery = parse({"_id": "p"}, idempotency_key="msg-1", sanity_transaction_time=WHEN)
    assert delivery.idempotency_key == "msg-1"
    assert delivery.requests == (JobRequest("p", None, T, JobSource.WEBHOOK),)


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


def test_a_body_nested_too_deep_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedDelivery, match="nested too deeply"):
        parse(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("doc_id", "valid"),
    [
        ("a" * 128, True),
        ("a" * 129, False),
        ("189bc292-e41b-42a0-91b5-bfaa33a34af2", True),
        ("animal.mammal.dog", True),
        ("-abcde-12345", False),
        ("dog.-abcde", False),
        ("product 1", False),
        ("product/1", False),
        ("prøduct", False),
        ("", False),
    ],
)
def test_sanity_document_ids(doc_id: str, valid: bool) -> None:
    assert (id_problem(doc_id) is None) is valid


def test_ids_that_are_not_sanity_ids_are_ignored_with_a_short_reason() -> None:
    hostile = "x" * 900_000
    delivery = parse({"ids": {"updated": ["post-1", hostile, "bad id"]}})
    assert [e.document_id for e in delivery.requests] == ["post-1"]
    (shown, reason), (_, other) = delivery.ignored
    assert len(shown) < 100 and shown.endswith("(900000 characters)")
    assert "longer than 128" in reason and "only letters" in other


def test_a_delivery_with_no_valid_id_is_malformed() -> None:
    with pytest.raises(MalformedDelivery, match="not a Sanity document id"):
        parse({"_id": "x" * 900_000, "_type": "post"})


def test_documents_per_delivery_are_capped() -> None:
    ids = [f"post-{n}" for n in range(11)]
    assert len(parse_delivery(_raw({"ids": {"updated": ids}}), {}, MAPPING).requests) == 11
    with pytest.raises(DeliveryTooLarge, match="11 documents in one delivery; at most 10"):
        parse_delivery(_raw({"ids": {"updated": ids}}), {}, MAPPING, max_documents=10)
    # Repeats of one id count once.
    assert parse_delivery(_raw({"ids": {"updated": ["a"] * 50}}), {}, MAPPING, max_documents=1)


def _raw(body: object) -> bytes:
    return json.dumps(body).encode()
