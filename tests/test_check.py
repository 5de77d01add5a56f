"""``cms-sync check``: one plain line per check, against both emulators over sockets; each
misconfiguration an operator makes is caught and named, and nothing is stored or written."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from process import cms_sync

from cms_sync.checks import probe_source
from cms_sync.cli import run_check
from cms_sync.settings import load_settings
from fakes import FakeContentLake, FakeFilestack, placeholder_cdn
from servers import serve
from wiring import service_env

pytestmark = pytest.mark.anyio

SECRET = "whsec-test"


def cdn_with_assets_only(request: httpx.Request) -> httpx.Response:
    """Sanity's CDN: the dataset's files are there, the probe's made-up name is not."""
    if "cms-sync-check-" in request.url.path:
        return httpx.Response(404, text="Not Found")
    return placeholder_cdn(request)


@dataclass
class Rig:
    lake: FakeContentLake
    fs: FakeFilestack
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch

    def set(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    async def check(self) -> tuple[int, list[str]]:
        out = io.StringIO()
        code = await run_check(out)
        return code, out.getvalue().splitlines()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rig]:
    lake = FakeContentLake.from_fixtures()
    fs = FakeFilestack(
        app_secret="fs-secret", source_transport=httpx.MockTransport(cdn_with_assets_only)
    )
    with serve(lake) as (sanity_url, _), serve(fs) as (filestack_url, _):
        env = service_env(
            sanity_url,
            filestack_url,
            FILESTACK_APP_SECRET="fs-secret",
            SANITY_WEBHOOK_SECRET=SECRET,
            CMS_SYNC_DATABASE=str(tmp_path / "jobs.db"),
        )
        ours = {k: v for k, v in env.items() if os.environ.get(k) != v}
        for name, value in ours.items():
            monkeypatch.setenv(name, value)
        yield Rig(lake, fs, ours, monkeypatch)


def line(lines: list[str], name: str) -> str:
    (found,) = [text for text in lines if text.split(maxsplit=1)[1].startswith(f"{name}:")]
    return found


async def test_a_working_configuration_passes_every_check_and_writes_nothing(rig: Rig) -> None:
    code, lines = await rig.check()
    assert code == 0, lines
    assert [text.split()[0] for text in lines] == ["ok"] * 6
    assert [text.split()[1] for text in lines] == [
        "settings:",
        "mapping:",
        "sanity:",
        "assets:",
        "filestack:",
        "database:",
    ]
    assert "API key and app secret (policy) accepted" in line(lines, "filestack")
    assert "read 5 documents" in line(lines, "sanity")
    assert "does not exist yet; serve will create it" in line(lines, "database")
    assert rig.fs.stores == [] and rig.lake.mutations == []
    assert "fs-secret" not in "\n".join(lines)


@pytest.mark.parametrize(
    ("env", "name", "says"),
    [
        ({"SANITY_WRITE_TOKEN": "sk-wrong"}, "sanity", "SANITY_WRITE_TOKEN was refused (HTTP 401)"),
        ({"SANITY_DATASET": "staging"}, "sanity", "dataset 'staging' not found in project"),
        ({"FILESTACK_API_KEY": "fs-wrong-key"}, "filestack", "FILESTACK_API_KEY was refused"),
        (
            {"FILESTACK_APP_SECRET": "fs-secret-of-another-app"},
            "filestack",
            "the policy signed with FILESTACK_APP_SECRET was refused",
        ),
        (
            {"CMS_SYNC_ALLOWED_ASSET_HOSTS": "assets.example.com"},
            "assets",
            "is not in CMS_SYNC_ALLOWED_ASSET_HOSTS",
        ),
        (
            {"CMS_SYNC_DATABASE": "/nonexistent-dir/jobs.db"},
            "database",
            "cannot create /nonexistent-dir/jobs.db",
        ),
    ],
)
async def test_each_misconfiguration_is_named_on_its_own_line(
    rig: Rig, env: dict[str, str], name: str, says: str
) -> None:
    rig.set(**env)
    code, lines = await rig.check()
    assert code == 1
    failed = [text for text in lines if text.startswith("FAIL")]
    assert failed == [line(lines, name)], lines
    assert says in failed[0]
    assert rig.fs.stores == [] and rig.lake.mutations == []


async def test_a_policy_required_but_no_app_secret_says_to_set_it(rig: Rig) -> None:
    rig.monkeypatch.delenv("FILESTACK_APP_SECRET")
    code, lines = await rig.check()
    assert code == 1
    assert "requires a signed policy for this key (security is on): set FILESTACK_APP_SECRET" in (
        line(lines, "filestack")
    )


async def test_an_unreachable_sanity_skips_the_asset_check(rig: Rig) -> None:
    rig.set(SANITY_API_HOST="http://127.0.0.1:9", CMS_SYNC_SANITY_TIMEOUT="2")
    code, lines = await rig.check()
    assert code == 1
    assert line(lines, "sanity").startswith(
        "FAIL  sanity: cannot reach Sanity at http://127.0.0.1:9"
    )
    assert line(lines, "assets").startswith("skip")


async def test_a_database_that_cannot_be_written_fails(rig: Rig, tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    database.write_bytes(b"this is not a SQLite database, whatever its name says" * 100)
    code, lines = await rig.check()
    assert code == 1
    assert line(lines, "database").startswith("FAIL  database:")


async def test_invalid_settings_are_each_a_line_and_nothing_is_called(rig: Rig) -> None:
    rig.monkeypatch.delenv("SANITY_WRITE_TOKEN")
    rig.set(CMS_SYNC_WORKERS="many")
    code, lines = await rig.check()
    assert code == 1
    assert sorted(lines[:2]) == [
        "FAIL  settings: CMS_SYNC_WORKERS: Input should be a valid integer, unable to parse "
        "string as an integer",
        "FAIL  settings: SANITY_WRITE_TOKEN is required",
    ]
    assert lines[2].startswith("skip  the rest:")
    assert rig.lake.queries == []


async def test_a_missing_webhook_secret_fails_the_settings(rig: Rig) -> None:
    rig.monkeypatch.delenv("SANITY_WEBHOOK_SECRET")
    code, lines = await rig.check()
    assert code == 1
    assert lines[0].startswith("FAIL  settings: SANITY_WEBHOOK_SECRET is required")


async def test_the_settings_line_says_whether_filestack_notifications_are_on(rig: Rig) -> None:
    _, lines = await rig.check()
    assert "Filestack notifications off (FILESTACK_WEBHOOK_SECRET unset)" in line(lines, "settings")
    rig.set(FILESTACK_WEBHOOK_SECRET="fs-hook-secret-value")
    _, lines = await rig.check()
    assert "Filestack notifications verified on /webhooks/filestack" in line(lines, "settings")
    assert "fs-hook-secret-value" not in "\n".join(lines)


async def test_a_bad_mapping_file_fails_the_mapping(rig: Rig, tmp_path: Path) -> None:
    mapping = tmp_path / "media.toml"
    mapping.write_text("[types.product]\nfields = ['main image']\n")
    rig.set(CMS_SYNC_CONFIG=str(mapping))
    code, lines = await rig.check()
    assert code == 1
    assert lines[1].startswith(f"FAIL  mapping: CMS_SYNC_CONFIG: {mapping}")


def test_the_probe_source_is_allow_listed_and_names_no_asset() -> None:
    settings = load_settings(
        sanity_project_id="cmsdemo",
        sanity_dataset="production",
        sanity_write_token="sk-test-token",
        filestack_api_key="fs-test-key",
    )
    source = probe_source(settings.asset_allow_list)
    assert source is not None
    assert source.startswith("https://cdn.sanity.io/images/cmsdemo/production/cms-sync-check-")
    assert probe_source(()) is None


def test_the_command_prints_the_same_lines_and_exit_code(rig: Rig, tmp_path: Path) -> None:
    env = {**os.environ, **rig.env, "SANITY_DATASET": "staging"}
    result = cms_sync("check", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert "dataset 'staging' not found" in line(lines, "sanity")
