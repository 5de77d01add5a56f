"""Acceptance: the real ``cms-sync`` command, as a process, against both fakes over sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fakes import FakeContentLake, FakeFilestack
from servers import serve
from wiring import service_env

TOKEN = "sk-test-token"
APP_SECRET = "fs-app-secret-value"
FIELDS = ("filestackHandle", "filestackUrl", "filestackSize", "filestackMimeType")


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class World:
    lake: FakeContentLake
    fs: FakeFilestack
    env: dict[str, str]
    cwd: Path

    def run(self, *args: str, **env: str) -> Run:
        proc = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "cms_sync", *args],
            env={**self.env, **env},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    lake = FakeContentLake.from_fixtures(token=TOKEN)
    fs = FakeFilestack(app_secret=APP_SECRET)
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = service_env(
            sanity_url,
            filestack_url,
            FILESTACK_APP_SECRET=APP_SECRET,
            CMS_SYNC_LOG_FORMAT="json",
        )
        yield World(lake, fs, env, tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_clean(run: Run) -> None:
    assert "Traceback" not in run.out + run.err
    assert TOKEN not in run.out + run.err and APP_SECRET not in run.out + run.err


def test_sync_patches_every_slot_then_a_second_run_sends_nothing(world: World) -> None:
    first = world.run("sync", "product-1")
    assert_clean(first)
    assert (first.code, first.out) == (0, "product-1: stored 5, reused 0, skipped 0; patched\n")
    assert len(world.fs.stores) == 5  # one per distinct asset, all signed (the fake verifies)
    assert len({body["sources"][0] for body in world.fs.stores}) == 5
    doc = world.lake.documents["product-1"]
    for slot in [doc["mainImage"], *doc["gallery"], doc["specSheet"]]:
        assert all(slot.get(name) is not None for name in FIELDS)
        assert slot["filestackSourceAsset"] == slot["asset"]["_ref"]

    second = world.run("sync", "product-1")
    assert (second.code, second.out) == (
        0,
        "product-1: stored 0, reused 0, skipped 5; already in sync\n",
    )
    assert len(world.fs.stores) == 5 and len(world.lake.mutations) == 1


def test_logs_are_json_events_on_stderr(world: World) -> None:
    run = world.run("sync", "post-1")
    events = [json.loads(line) for line in run.err.splitlines()]
    assert [e["event"] for e in events] == ["asset_stored", "document_patched"]
    assert all(e["document_id"] == "post-1" for e in events)


def test_several_documents_share_stores_and_report_per_line(world: World) -> None:
    run = world.run("sync", "product-shared-a", "product-shared-b", "post-foreign-host")
    lines = run.out.splitlines()
    assert lines[0] == "product-shared-a: stored 1, reused 1, skipped 0; patched"
    assert lines[1] == "product-shared-b: stored 0, reused 1, skipped 0; patched"
    assert lines[2].startswith(
        "post-foreign-host: stored 0, reused 0, skipped 0; failed 1: mainImage:"
    )
    assert "'images.example.net' is not in CMS_SYNC_ALLOWED_ASSET_HOSTS" in lines[2]
    assert run.code == 1 and len(world.fs.stores) == 1


def test_bad_write_token_is_one_clear_line(world: World) -> None:
    run = world.run("sync", "product-1", SANITY_WRITE_TOKEN="sk-wrong")
    assert_clean(run)
    assert run.code == 1
    assert run.out == (
        "product-1: error: Sanity: HTTP 401 Unauthorized: Session not found "
        "(check SANITY_WRITE_TOKEN)\n"
    )
    assert "sk-wrong" not in run.out + run.err


def test_unknown_document_is_one_clear_line(world: World) -> None:
    run = world.run("sync", "no-such-doc")
    assert_clean(run)
    assert (run.code, run.out) == (
        1,
        "no-such-doc: error: no published document with id 'no-such-doc'\n",
    )


def test_unreachable_filestack_is_one_clear_line(world: World) -> None:
    run = world.run(
        "sync", "post-1", FILESTACK_PROCESS_URL=f"http://127.0.0.1:{closed_port()}/process"
    )
    assert_clean(run)
    assert run.code == 1
    (line,) = run.out.splitlines()
    assert line.startswith(
        "post-1: stored 0, reused 0, skipped 0; failed 1: mainImage: Filestack: cannot connect"
    )
    assert line.endswith("(check FILESTACK_PROCESS_URL)")
    assert world.lake.mutations == []


def test_dry_run_prints_the_plan_and_sends_nothing(world: World) -> None:
    replaced = world.lake.documents["product-replaced"]["mainImage"]
    synced = world.lake.documents["product-synced"]["mainImage"]["asset"]["_ref"]
    run = world.run("sync", "--dry-run", "product-replaced", "product-synced")
    assert run.code == 0
    assert run.out.splitlines() == [
        "product-replaced (product, rev rP4fffffffffffffffffff): 1 to store, 0 in sync, 0 empty, "
        "0 blocked; dry run, nothing sent",
        f"  mainImage: store: asset replaced (handle was made from "
        f"{replaced['filestackSourceAsset']}) [{replaced['asset']['_ref']}]",
        "product-synced (product, rev rP3eeeeeeeeeeeeeeeeeee): 0 to store, 1 in sync, 0 empty, "
        "0 blocked; dry run, nothing sent",
        f"  mainImage: in sync: handle made from {synced} [{synced}]",
    ]
    assert world.fs.stores == [] and world.lake.mutations == []


def test_drafts_are_refused_up_front(world: World) -> None:
    run = world.run("sync", "drafts.product-1")
    assert run.code == 1
    assert "only published documents are synced" in run.out
    assert world.lake.queries == []


def test_ids_that_are_not_sanity_ids_are_refused_up_front(world: World) -> None:
    run = world.run("sync", "product 1", "x" * 5000)
    assert run.code == 1
    assert run.out.splitlines() == [
        "product 1: error: not a Sanity document id: only letters, digits, '.', '_' and '-' "
        "are allowed",
        f"{'x' * 64}… (5000 characters): error: not a Sanity document id: longer than 128 "
        "characters",
    ]
    assert world.lake.queries == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SANITY_PROJECT_ID": ""}, "SANITY_PROJECT_ID: String should match pattern"),
        ({"CMS_SYNC_CONFIG": "missing.toml"}, "CMS_SYNC_CONFIG: cannot read missing.toml"),
        ({"FILESTACK_PROCESS_URL": "nope"}, "FILESTACK_PROCESS_URL: must be an http(s) URL"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    world: World, env: dict[str, str], message: str
) -> None:
    run = world.run("sync", "product-1", **env)
    assert run.code == 2 and run.out == ""
    assert run.err.startswith(f"cms-sync: configuration error: {message}")
    assert len(run.err.splitlines()) == 1


def test_missing_variable_names_it(world: World) -> None:
    env = {k: v for k, v in world.env.items() if k != "SANITY_WRITE_TOKEN"}
    world.env = env
    run = world.run("sync", "product-1")
    assert (run.code, run.err) == (
        2,
        "cms-sync: configuration error: SANITY_WRITE_TOKEN is required\n",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SANITY_WEBHOOK_SECRET": "s", "CMS_SYNC_DATABASE": "no/such/dir/x.db"},
            "CMS_SYNC_DATABASE: cannot open no/such/dir/x.db: unable to open database file",
        ),
        ({}, "SANITY_WEBHOOK_SECRET is required to verify deliveries"),
    ],
)
def test_serve_start_up_errors_are_one_line(
    world: World, env: dict[str, str], message: str
) -> None:
    run = world.run("serve", "--port", "0", **env)
    assert run.code == 2
    assert run.err.startswith(f"cms-sync: configuration error: {message}")
    assert len(run.err.splitlines()) == 1


@pytest.mark.parametrize("echoing", ["sanity", "filestack"])
def test_an_upstream_that_echoes_the_request_leaks_no_secret(tmp_path: Path, echoing: str) -> None:
    """A debugging gateway in front of either service puts our credentials in its errors."""

    def echo(request: httpx.Request) -> httpx.Response:
        text = f"{dict(request.headers)} {request.content.decode()}"
        return httpx.Response(400 if echoing == "filestack" else 401, text=text)

    lake = FakeContentLake.from_fixtures(token=TOKEN)
    fs = FakeFilestack(app_secret=APP_SECRET)
    with (
        serve(echo if echoing == "sanity" else lake) as (sanity_url, _),
        serve(echo if echoing == "filestack" else fs) as (filestack_url, _),
    ):
        env = service_env(
            sanity_url, filestack_url, FILESTACK_APP_SECRET=APP_SECRET, CMS_SYNC_LOG_FORMAT="json"
        )
        run = World(lake, fs, env, tmp_path).run("sync", "post-1")
    assert run.code == 1 and "[redacted]" in run.out
    for secret in (TOKEN, APP_SECRET, env["FILESTACK_API_KEY"]):
        assert secret not in run.out + run.err
    assert_clean(run)


def operator_env(world: World, **env: str) -> dict[str, str]:
    """Only CMS_SYNC_DATABASE: none of the Sanity and Filestack settings."""
    kept = {k: v for k, v in world.env.items() if not k.startswith(("SANITY_", "FILESTACK_"))}
    return {**kept, **env}


@pytest.mark.parametrize(
    "command",
    [["status"], ["failures", "--json"], ["replay", "--all-failed"], ["replay", "post-1"]],
)
def test_operator_commands_never_invent_a_database(world: World, command: list[str]) -> None:
    world.env = operator_env(world, CMS_SYNC_DATABASE="cms-sycn.db")  # a typo
    run = world.run(*command)
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        "cms-sync: configuration error: CMS_SYNC_DATABASE: no database at cms-sycn.db "
        "(only serve and sync create one; is the path right?)\n"
    )
    assert list(world.cwd.iterdir()) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_operator_commands_need_only_the_database(
    world: World, backend: str, request: pytest.FixtureRequest
) -> None:
    shown = "cms-sync.db"
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        world.env["CMS_SYNC_DATABASE"] = url
        shown = url  # it has no password to leave out
    assert world.run("sync", "post-1").code == 0  # sync makes the database
    world.env = operator_env(world)
    status = world.run("status", "--json")
    assert status.code == 0 and json.loads(status.out)["jobs"]["failed"] == 0
    assert world.run("failures").out == "no failed documents\n"
    replay = world.run("replay", "post-1", "post-404")
    assert replay.code == 0
    assert replay.out.splitlines() == [
        f"post-1: never seen by this store (no job in {shown}); queued anyway",
        f"post-404: never seen by this store (no job in {shown}); queued anyway",
        "queued 2: post-1, post-404",
    ]
    again = world.run("replay", "post-1")
    assert again.out == "queued 1: post-1\n"  # seen now: it has a job
    now = world.run("replay", "--now", "post-1")  # syncs here: the credentials are needed
    assert (now.code, now.err) == (
        2,
        "cms-sync: configuration error: SANITY_PROJECT_ID is required (and 3 more)\n",
    )
