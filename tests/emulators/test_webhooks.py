"""GROQ-powered webhooks from the Content Lake emulator: filter, projection, signature, retries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cms_sync import groq, signature
from cms_sync.emulators import ContentLake, Dispatcher, Webhook
from cms_sync.emulators.webhooks import signature_header
from fakes import load_fixture

FILTER = '_type == "product" && delta::changedAny(mainImage.asset)'


def receiver(answers: list[int]) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """Answers each delivery with the next status (the last one repeats)."""
    got: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        got.append(request)
        return httpx.Response(answers[min(len(got), len(answers)) - 1])

    return got, httpx.MockTransport(handle)


def lake_with(
    webhook: Webhook, answers: list[int], **dispatch: Any
) -> tuple[ContentLake, list[httpx.Request]]:
    got, transport = receiver(answers)
    options = {"base_delay": 0.001, "transport": transport, **dispatch}
    dispatcher = Dispatcher("cmsdemo", "production", **options)
    doc = {
        "_id": "product-1",
        "_type": "product",
        "_rev": "r0",
        "mainImage": {"asset": {"_ref": "a"}},
    }
    lake = ContentLake(documents={"product-1": doc}, webhooks=[webhook], dispatcher=dispatcher)
    return lake, got


def set_image(ref: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.update(mainImage={"asset": {"_ref": ref}})


@pytest.mark.parametrize("vector", load_fixture("sanity/webhooks/signatures.json")["vectors"])
def test_signatures_match_sanity_webhook(vector: dict[str, str]) -> None:
    t = int(vector["header"].split(",")[0][2:])
    assert signature_header(vector["secret"], vector["body"].encode(), t) == vector["header"]


def test_a_matching_change_is_delivered_signed_with_sanitys_headers() -> None:
    hook = Webhook("http://svc/webhooks/sanity", "s3cret", FILTER, "{_id, _type, _rev}")
    lake, got = lake_with(hook, [202])
    lake.edit("product-1", set_image("b"))
    assert lake.dispatcher is not None and lake.dispatcher.wait_idle(10)
    (request,) = got
    rev = lake.documents["product-1"]["_rev"]
    assert request.content == b'{"_id":"product-1","_type":"product","_rev":"%s"}' % rev.encode()
    signature.verify(request.headers["sanity-webhook-signature"], request.content, "s3cret")
    headers = request.headers
    assert headers["sanity-operation"] == "update" and headers["sanity-document-id"] == "product-1"
    assert headers["sanity-transaction-id"] == rev and headers["sanity-project-id"] == "cmsdemo"
    assert headers["sanity-transaction-time"] == lake.documents["product-1"]["_updatedAt"]
    assert headers["idempotency-key"] and headers["content-type"] == "application/json"


def test_the_filter_runs_in_delta_mode() -> None:
    hook = Webhook("http://svc/hook", "s", FILTER, "{_id}")
    lake, got = lake_with(hook, [200])
    lake.edit("product-1", lambda doc: doc.update(title="only the title"))  # no match
    lake.edit("product-1", set_image("b"))  # a match
    lake.publish([{"createIfNotExists": {"_id": "drafts.product-1", "_type": "product"}}])
    lake.publish([{"create": {"_id": "post-1", "_type": "post"}}])  # another type
    assert lake.dispatcher is not None and lake.dispatcher.wait_idle(10)
    assert len(got) == 1


def test_retries_keep_the_idempotency_key_and_stop_at_the_first_2xx() -> None:
    lake, got = lake_with(Webhook("http://svc/hook", "s"), [503, 429, 500, 202])
    lake.edit("product-1", set_image("b"))
    assert lake.dispatcher is not None and lake.dispatcher.wait_idle(10)
    assert len(got) == 4
    assert len({r.headers["idempotency-key"] for r in got}) == 1
    (delivery,) = lake.dispatcher.deliveries
    assert delivery.attempts == [503, 429, 500, 202] and delivery.outcome == "delivered"


def test_a_4xx_is_dropped_and_retries_expire() -> None:
    lake, got = lake_with(Webhook("http://svc/hook"), [400])
    lake.edit("product-1", set_image("b"))
    assert lake.dispatcher is not None and lake.dispatcher.wait_idle(10)
    assert [d.outcome for d in lake.dispatcher.deliveries] == ["dropped"] and len(got) == 1
    assert "sanity-webhook-signature" not in got[0].headers  # no secret, no signature

    lake, got = lake_with(Webhook("http://svc/hook"), [503], retry_for=0.01)
    lake.edit("product-1", set_image("b"))
    assert lake.dispatcher is not None and lake.dispatcher.wait_idle(10)
    assert [d.outcome for d in lake.dispatcher.deliveries] == ["expired"]


def test_one_delivery_is_in_flight_per_webhook() -> None:
    in_flight, most = [0], [0]
    lock, release = threading.Lock(), threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        release.wait(0.02)
        with lock:
            in_flight[0] -= 1
        return httpx.Response(200)

    dispatcher = Dispatcher("p", "d", transport=httpx.MockTransport(slow))
    hook = Webhook("http://svc/hook")
    for n in range(5):
        dispatcher.enqueue(hook, "update", f"doc-{n}", b"{}", f"tx{n}", "now")
    assert dispatcher.wait_idle(10)
    dispatcher.close()
    assert most[0] == 1 and [d.outcome for d in dispatcher.deliveries] == ["delivered"] * 5


def test_a_bad_filter_is_refused_when_the_webhook_is_made() -> None:
    with pytest.raises(groq.GroqSyntaxError):
        Webhook("http://svc/hook", filter="_type ==")
    with pytest.raises(ValueError, match="trigger"):
        Webhook("http://svc/hook", on=("publish",))
