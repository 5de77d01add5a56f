from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from structlog.testing import capture_logs

from cms_sync import signature
from cms_sync.app import WorkerMode, create_app
from cms_sync.errors import ConfigError, StoreUnavailable
from cms_sync.handlers.webhooks import plain_headers
from cms_sync.jobs import Accepted, JobState
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.mapping import default_mapping
from cms_sync.storage import Storage
from servers import RunningApp, run_app
from wiring import make_settings

SECRET = "whsec-test"
NOW = 1_763_700_000.0


class Client:
    """Talks to the service over its socket and reads its job store."""

    def __init__(self, running: RunningApp) -> None:
        self.running = running
        self.http = httpx.Client(base_url=running.url, timeout=10)

    def post(self, content: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post("/webhooks/sanity", content=content, headers=headers or {})

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def stats(self) -> dict[JobState, int]:
        store = self.running.service.store
        return self.running.call(lambda: store.stats(now=NOW)).counts  # type: ignore[no-any-return]


def signed(body: bytes, secret: str = SECRET, t: int = int(NOW * 1000)) -> dict[str, str]:
    return {"sanity-webhook-signature": signature.sign(secret, body, t)}


def post(client: Client, payload: Any, *, key: str | None = "k1", **headers: str) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    all_headers = {"content-type": "application/json", **signed(body)}
    if key:
        all_headers["idempotency-key"] = key
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(body, all_headers)


@contextmanager
def serve(
    tmp_path: Path, *, storage: Storage | None = None, verify: bool = True, **settings: Any
) -> Iterator[Client]:
    app = create_app(
        make_settings(
            sanity_webhook_secret=SECRET, cms_sync_database=tmp_path / "t.db", **settings
        ),
        mapping=default_mapping(),
        storage=storage,
        verify_signatures=verify,
        worker_mode=WorkerMode.NONE,
        clock=lambda: NOW,
    )
    with run_app(app) as running:
        client = Client(running)
        try:
            yield client
        finally:
            client.http.close()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    with serve(tmp_path) as client:
        yield client


def test_signed_delivery_is_queued_and_acknowledged(client: Client) -> None:
    response = post(
        client, {"_id": "product-1", "_type": "product", "_rev": "r1"}, sanity_operation="update"
    )
    assert response.status_code == 202
    assert response.json() == {
        "status": "queued",
        "queued": ["product-1"],
        "coalesced": [],
        "ignored": [],
    }
    assert client.stats()[JobState.PENDING] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"sanity-webhook-signature": "garbage"},
        {
            "sanity-webhook-signature": signature.sign(
                "wrong-secret", b'{"_id":"product-1"}', 1763700000000
            )
        },
        {"sanity-webhook-signature": signature.sign(SECRET, b'{"_id":"product-2"}', 1763700000000)},
    ],
    ids=["missing", "malformed", "wrong-secret", "tampered-body"],
)
def test_bad_signatures_are_401_and_leave_no_trace(client: Client, headers: dict[str, str]) -> None:
    body = b'{"_id":"product-1"}'
    response = client.post(body, {"idempotency-key": "k1", **headers})
    assert response.status_code == 401
    assert "invalid signature" in response.json()["error"]
    assert sum(client.stats().values()) == 0
    # The key was not recorded either: the genuine delivery with it is queued, not a duplicate.
    assert post(client, {"_id": "product-1"}).status_code == 202


def test_repeat_delivery_is_a_2xx_no_op(client: Client) -> None:
    assert post(client, {"_id": "post-1"}).status_code == 202
    again = post(client, {"_id": "post-1"})
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert client.stats()[JobState.PENDING] == 1


def test_deliveries_for_a_pending_document_coalesce(client: Client) -> None:
    post(client, {"_id": "post-1"}, key="a")
    second = post(client, {"_id": "post-1"}, key="b")
    assert second.status_code == 202 and second.json()["coalesced"] == ["post-1"]
    assert client.stats()[JobState.PENDING] == 1


def test_legacy_transaction_body(client: Client) -> None:
    body = {
        "transactionId": "t",
        "projectId": "p",
        "dataset": "d",
        "ids": {
            "created": ["post-1"],
            "updated": ["product-1", "drafts.x"],
            "deleted": ["gone"],
            "all": [],
        },
    }
    response = post(client, body)
    assert response.status_code == 202
    assert response.json()["queued"] == ["post-1", "product-1"]
    assert [i["id"] for i in response.json()["ignored"]] == ["drafts.x", "gone"]


@pytest.mark.parametrize(
    ("payload", "headers", "reason"),
    [
        ({"_id": "drafts.product-1", "_type": "product"}, {}, "draft"),
        ({"_id": "versions.r.product-1", "_type": "product"}, {}, "release version"),
        ({"_id": "product-1", "_type": "product"}, {"sanity_operation": "delete"}, "delete"),
        ({"_id": "about", "_type": "page"}, {}, "not in the media mapping"),
    ],
)
def test_nothing_to_queue_is_acknowledged_with_the_reason(
    client: Client, payload: dict[str, str], headers: dict[str, str], reason: str
) -> None:
    response = post(client, payload, **headers)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["ignored"][0]["reason"]
    assert sum(client.stats().values()) == 0


@pytest.mark.parametrize(
    ("body", "message"), [(b"{nope", "not JSON"), (b'{"title": "no id"}', "no document id")]
)
def test_malformed_bodies_are_400(client: Client, body: bytes, message: str) -> None:
    response = post(client, body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_id_from_header_when_the_projection_has_none(client: Client) -> None:
    response = post(client, {"title": "x"}, sanity_document_id="post-1")
    assert response.status_code == 202 and response.json()["queued"] == ["post-1"]


def test_oversized_body_is_413(tmp_path: Path) -> None:
    with serve(tmp_path, cms_sync_webhook_max_body=1024) as client:
        big = json.dumps({"_id": "post-1", "pad": "x" * 2000}).encode()
        assert post(client, big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no content-length: counted while reading
            yield big[:1000]
            yield big[1000:]

        assert client.post(chunks(), signed(big)).status_code == 413
        assert sum(client.stats().values()) == 0


def store_whose_accept_raises(path: Path, exc: Exception) -> SQLiteJobStore:
    """A SQLite job store at ``path`` whose ``accept`` raises ``exc``."""

    class Raising(SQLiteJobStore):
        async def accept(self, *args: Any, **kwargs: Any) -> Accepted:
            raise exc

    async def open_it() -> SQLiteJobStore:
        return await Raising.open(path)

    return asyncio.run(open_it())


def test_store_failure_is_503_so_sanity_retries(tmp_path: Path) -> None:
    store = store_whose_accept_raises(
        tmp_path / "b.db", StoreUnavailable("job store: disk I/O error")
    )
    with serve(tmp_path, storage=Storage(store, store.records)) as client:
        assert post(client, {"_id": "post-1"}).status_code == 503
        client.running.call(store.close)


def test_a_bug_behind_the_endpoint_is_a_500_and_other_methods_are_405(tmp_path: Path) -> None:
    """The endpoint is served ahead of Starlette's stack (``App``); it still answers as
    Starlette would: a bug is a 500 (and is raised on, for the server to log), another
    method on its path is Starlette's 405."""
    store = store_whose_accept_raises(tmp_path / "b.db", KeyError("a bug, not a store failure"))
    with (
        capture_logs() as logs,
        serve(tmp_path, storage=Storage(store, store.records)) as client,
    ):
        response = post(client, {"_id": "post-1"})
        assert (response.status_code, response.text) == (500, "Internal Server Error")
        # (the server closes a connection whose request raised, as behind Starlette's stack)
        assert httpx.get(f"{client.running.url}/webhooks/sanity").status_code == 405
        again = Client(client.running)
        assert post(again, {"_id": "post-1"}, key="k2").status_code == 500  # still serving
        again.http.close()
        client.running.call(store.close)
    assert "delivery_queued" not in [entry["event"] for entry in logs]


def test_signature_tolerance_is_opt_in(tmp_path: Path) -> None:
    body = b'{"_id":"post-1"}'
    old = signed(body, t=int((NOW - 3600) * 1000))
    with serve(tmp_path, cms_sync_webhook_tolerance=300) as client:
        response = client.post(body, old)
        assert response.status_code == 401 and "away from now" in response.json()["error"]
    with serve(tmp_path) as client:
        assert client.post(body, old).status_code == 202


def test_insecure_mode_accepts_unsigned_and_says_so(tmp_path: Path) -> None:
    with capture_logs() as logs, serve(tmp_path, verify=False) as client:
        assert client.post(b'{"_id":"post-1"}').status_code == 202
    events = [entry["event"] for entry in logs]
    assert "signatures_not_verified" in events and "delivery_unverified" in events


def test_secret_is_required_unless_insecure() -> None:
    with pytest.raises(ConfigError, match="SANITY_WEBHOOK_SECRET is required"):
        create_app(make_settings(), mapping=default_mapping())


def test_health_and_readiness(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.http.post("/healthz").status_code == 405


def test_a_timestamp_of_thousands_of_digits_is_401_not_500(client: Client) -> None:
    body = b'{"_id":"product-1"}'
    header = f"t={'9' * 5000},v1={signature.compute(SECRET, body, 1)}"
    response = client.post(body, {"sanity-webhook-signature": header})
    assert response.status_code == 401
    assert sum(client.stats().values()) == 0


def test_a_signed_body_nested_100k_deep_is_400_not_500(client: Client) -> None:
    response = post(client, b"[" * 100_000 + b"]" * 100_000)
    assert (response.status_code, response.json()) == (400, {"error": "body is nested too deeply"})


def test_an_id_that_is_not_a_sanity_id_queues_nothing(client: Client) -> None:
    response = post(client, {"_id": "x" * 900_000, "_type": "post"})
    assert response.status_code == 400
    assert len(response.content) < 300 and "longer than 128" in response.json()["error"]
    assert sum(client.stats().values()) == 0


def test_documents_per_delivery_are_capped_413(tmp_path: Path) -> None:
    with serve(tmp_path, cms_sync_webhook_max_documents=100) as client:
        ids = [f"post-{n}" for n in range(101)]
        response = post(client, {"ids": {"created": [], "updated": ids, "deleted": []}})
        assert response.status_code == 413
        assert response.json() == {"error": "101 documents in one delivery; at most 100"}
        assert sum(client.stats().values()) == 0
        # The key was not used up: a delivery within the cap with it is queued.
        within = post(client, {"ids": {"created": [], "updated": ids[:100], "deleted": []}})
        assert within.status_code == 202


def test_a_repeated_header_is_read_as_its_first_value() -> None:
    # The handler reads headers from a plain dict; it must answer as Starlette's
    # Headers.get does: the first of repeated names, names lower-cased by the server.
    raw = [(b"idempotency-key", b"first"), (b"host", b"h"), (b"idempotency-key", b"second")]
    request = Request({"type": "http", "headers": raw})
    assert plain_headers(request.scope)["idempotency-key"] == "first"
    assert plain_headers(request.scope)["idempotency-key"] == request.headers.get("idempotency-key")
