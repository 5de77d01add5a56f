"""``cms-sync demo`` and ``cms-sync emulate`` as a newcomer runs them: real processes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from process import cms_sync
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cms_sync import filestack_notices
from cms_sync.demo import FIELDS, catalogue, run_demo, slots
from cms_sync.emulators.running import Emulators
from cms_sync.mapping import default_mapping
from fakes import FIXTURES
from servers import run_app

#: What a fresh machine has: no Sanity or Filestack settings at all.
CLEAN = {
    k: v for k, v in os.environ.items() if not k.startswith(("SANITY_", "FILESTACK_", "CMS_SYNC_"))
}


def test_the_demo_converges_and_every_document_carries_the_four_fields() -> None:
    seen: list[Emulators] = []
    out = io.StringIO()
    code = asyncio.run(run_demo(out, within=30, inspect=seen.append))
    assert code == 0, out.getvalue()
    (emu,) = seen
    ids = [d["_id"] for d in catalogue()["documents"]]
    media = [s for i in ids for s in slots(emu.lake.documents[i], default_mapping())]
    assert len(media) == 11 and all(s.done for s in media)
    assert all(all(s.value.get(f) for f in FIELDS) for s in media)
    # What it printed is what the Content Lake holds.
    for s in media:
        assert s.value["filestackUrl"] in out.getvalue()
    assert "converged" in out.getvalue().splitlines()[-1]
    # Filestack's notifications reached the service, signed: one per store
    stores = len(emu.filestack.stores)
    assert f"Filestack notified the service of {stores - 1} of {stores - 1} stores" in (
        out.getvalue()
    )


def test_cms_sync_demo_runs_on_a_machine_with_no_settings(tmp_path: Path) -> None:
    done = cms_sync("demo", "--timeout", "30", env=CLEAN, cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cms-sync demo: converged" in done.stdout
    assert done.stdout.count("http://127.0.0.1:") >= 11
    assert not list(tmp_path.iterdir())  # it leaves nothing behind


@pytest.fixture
def emulate(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    with emulating(tmp_path) as running:
        yield running


@contextmanager
def emulating(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``cms-sync emulate`` over the recorded dataset, with the worker's own credentials."""
    credentials = {
        "SANITY_PROJECT_ID": "cmsdemo",
        "SANITY_DATASET": "production",
        "SANITY_WRITE_TOKEN": "sk-emulate-token",
        "FILESTACK_API_KEY": "fs-emulate-key",
    }
    dataset = FIXTURES / "sanity" / "dataset.ndjson"
    ports = ("--sanity-port", "0", "--filestack-port", "0")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "cms_sync", "emulate", *ports, "--data", str(dataset), *args],
        env={**CLEAN, **credentials},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        name, sep, value = line.strip().partition("=")
        if sep:
            printed[name] = value
        if line.startswith("Running until stopped"):
            break
    try:
        # The emulator names the credentials it was given, never their values.
        assert not any(v in "".join(lines) for v in credentials.values() if "-" in v)
        assert set(printed) >= {"SANITY_API_HOST", "FILESTACK_PROCESS_URL"}
        yield proc, {**CLEAN, **credentials, **printed, "CMS_SYNC_RETRY_BACKOFF": "0"}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_unmodified_worker_syncs_against_cms_sync_emulate(
    emulate: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    proc, env = emulate
    done = cms_sync("sync", "product-1", "post-1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    query = f"{env['SANITY_API_HOST']}/v2025-02-19/data/query/production"
    result = httpx.get(
        query,
        params={"query": '*[_id == "product-1"][0].mainImage{filestackUrl, filestackSize}'},
        headers={"authorization": "Bearer sk-emulate-token"},
    ).json()["result"]
    stored = httpx.get(result["filestackUrl"])  # the URL serves the bytes that were fetched
    assert stored.status_code == 200 and len(stored.content) == result["filestackSize"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_emulate_notifies_stores_signed_as_filestack_does(tmp_path: Path) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []
    arrived = threading.Event()

    async def hook(request: Request) -> Response:
        if request.method == "POST":
            received.append((await request.body(), dict(request.headers)))
            arrived.set()
        return Response(status_code=200)

    receiver = Starlette(routes=[Route("/{path:path}", hook, methods=["GET", "POST"])])
    with (
        run_app(receiver) as hooks,
        emulating(tmp_path, "--filestack-webhook", f"{hooks.url}/webhooks/filestack") as (_, env),
    ):
        done = cms_sync("sync", "post-1", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert arrived.wait(10)
    body, headers = received[0]
    # made up (none was configured), printed, and it verifies what was sent
    secret = env["FILESTACK_WEBHOOK_SECRET"]
    filestack_notices.verify(
        headers["fs-signature"],
        headers["fs-timestamp"],
        body,
        secret,
        max_age=60,
        now=float(headers["fs-timestamp"]),
    )
    notice = filestack_notices.parse(body, dataset="cmsdemo/production")
    assert isinstance(notice, filestack_notices.StoreNotice)
    assert notice.document_id == "post-1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook-filter", "_type =="], "--webhook-filter: "),
        (["--data", "missing.ndjson"], "--data: cannot read missing.ndjson"),
    ],
)
def test_emulate_refuses_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = cms_sync(
        "emulate", "--sanity-port", "0", "--filestack-port", "0", *args, env=CLEAN, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"cms-sync: configuration error: {message}")
    assert len(done.stderr.splitlines()) == 1
