"""Secrets never leave the process, even when an upstream echoes the request back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import structlog

from cms_sync import filestack, sanity
from cms_sync.errors import CmsSyncError, RemoteError
from cms_sync.jobs import JobRequest, JobSource, JobState
from cms_sync.jobstore.sqlite import SQLiteJobStore
from cms_sync.log import configure_logging
from cms_sync.scrub import REDACTED, Scrubber, request_secrets
from fakes import FakeContentLake
from wiring import make_settings, no_wait_policy

TOKEN = "sk-live-token-1234567890"
API_KEY = "AfsLiveApiKey0987"
APP_SECRET = "fs-app-secret-value"
SECRETS = (TOKEN, API_KEY, APP_SECRET)


def echo(status: int) -> Callable[[httpx.Request], httpx.Response]:
    """A debugging gateway: answers with the credentials it saw, then all it was sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        tasks = body.get("tasks", [])
        security = next((t["params"] for t in tasks if t["name"] == "security"), {})
        seen = [
            request.headers.get("authorization", ""),
            body.get("apikey", ""),
            security.get("policy", ""),
            security.get("signature", ""),
        ]
        everything = f"{' '.join(seen)} {dict(request.headers)} {request.content.decode()}"
        return httpx.Response(status, json={"error": everything})

    return handler


def leaked(text: str, *also: str) -> list[str]:
    return [s for s in (*SECRETS, *also) if s in text]


def test_values_are_scrubbed_raw_json_escaped_and_url_encoded() -> None:
    scrub = Scrubber(['se"cret/+1', "tiny"])
    text = 'a se"cret/+1 b se\\"cret/+1 c se%22cret%2F%2B1 tiny'
    assert scrub(text) == f"a {REDACTED} b {REDACTED} c {REDACTED} tiny"


def test_a_requests_own_secrets_are_found() -> None:
    body = {"apikey": API_KEY, "tasks": [{"params": {"policy": "eyJwb2x", "signature": "ab12cd"}}]}
    found = request_secrets({"authorization": f"Bearer {TOKEN}"}, body)
    assert sorted(found) == sorted([TOKEN, API_KEY, "eyJwb2x", "ab12cd"])


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 502, 200])
async def test_a_filestack_echo_puts_no_secret_in_the_error(status: int) -> None:
    settings = make_settings(filestack_api_key=API_KEY, filestack_app_secret=APP_SECRET)
    transport = httpx.MockTransport(echo(status))
    async with filestack.http_client(settings, transport=transport) as http:
        client = filestack.FilestackClient.from_settings(http, settings, retry=no_wait_policy())
        body = client.store_body("https://cdn.sanity.io/x.jpg", filename=None, tags={})
        policy = body["tasks"][1]["params"]
        with pytest.raises(CmsSyncError) as caught:
            await client.store_url("https://cdn.sanity.io/x.jpg", filename=None, tags={})
    text = str(caught.value) + (caught.value.body if isinstance(caught.value, RemoteError) else "")
    assert REDACTED in text
    # A policy made a moment later is the same one (same expiry second) as the one sent.
    assert leaked(text, policy["policy"], policy["signature"]) == []


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 502])
async def test_a_content_lake_echo_puts_no_token_in_the_error(status: int) -> None:
    settings = make_settings(sanity_write_token=TOKEN)
    async with sanity.http_client(settings, transport=httpx.MockTransport(echo(status))) as http:
        client = sanity.SanityClient(
            http,
            dataset="production",
            retry=no_wait_policy(attempts=1),
            scrub=Scrubber(settings.secret_values()),
        )
        with pytest.raises(RemoteError) as caught:
            await client.query("*[_id == $id][0]", {"id": "post-1"})
    assert REDACTED in str(caught.value) and leaked(str(caught.value) + caught.value.body) == []


@pytest.mark.anyio
async def test_the_job_store_keeps_no_secret_even_from_a_crashing_job(tmp_path: Path) -> None:
    """The worker scrubs what it records, whatever built the message (here: a bug)."""
    from cms_sync.mapping import default_mapping
    from cms_sync.sync import open_syncer
    from cms_sync.worker import Worker, WorkerOptions

    settings = make_settings(
        sanity_write_token=TOKEN, filestack_api_key=API_KEY, filestack_app_secret=APP_SECRET
    )

    def crash(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"bug holding {request.headers['authorization']}")

    # Logging as the entry point sets it up: the configured secrets scrubbed everywhere.
    logged = io.StringIO()
    configure_logging(fmt="json", stream=logged, scrub=Scrubber(settings.secret_values()))
    store = await SQLiteJobStore.open(tmp_path / "jobs.db")
    try:
        async with open_syncer(
            settings,
            default_mapping(),
            store.records,
            retry=no_wait_policy(),
            sanity_transport=httpx.MockTransport(crash),
            filestack_transport=httpx.MockTransport(FakeContentLake(documents={})),
        ) as syncer:
            worker = Worker(
                store,
                syncer,
                WorkerOptions(),
                scrub=Scrubber(settings.secret_values()),
            )
            await store.enqueue([JobRequest("post-1", source=JobSource.REPLAY)], now=0)
            assert await worker.drain() == 1
        stats = await store.stats(now=0)
        assert stats.counts[JobState.PENDING] == 1  # an internal error is retried
        (job,) = [j async for j in _pending(store)]
        assert "bug holding Bearer" in job and REDACTED in job and leaked(job) == []
        (crashed,) = [line for line in logged.getvalue().splitlines() if "job_crashed" in line]
        assert "RuntimeError: bug holding Bearer" in json.loads(crashed)["exception"]
        assert leaked(logged.getvalue()) == []
    finally:
        await store.close()
        structlog.reset_defaults()
        logging.getLogger().handlers = []


async def _pending(store: SQLiteJobStore):  # type: ignore[no-untyped-def]
    rows = await store.run(
        lambda conn: conn.execute("SELECT last_error FROM jobs WHERE state = 'pending'").fetchall()
    )
    for row in rows:
        yield row[0]
