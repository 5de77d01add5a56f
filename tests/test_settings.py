from __future__ import annotations

from pathlib import Path

import pytest

from cms_sync.allowlist import AllowedHost
from cms_sync.errors import ConfigError
from cms_sync.settings import load_settings

REQUIRED = {
    "SANITY_PROJECT_ID": "cmsdemo",
    "SANITY_DATASET": "production",
    "SANITY_WRITE_TOKEN": "sk-secret-token",
    "FILESTACK_API_KEY": "fs-key",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_defaults(env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.sanity_api_version == "2025-02-19"
    assert settings.filestack_process_url == "https://cdn.filestackcontent.com/process"
    assert settings.asset_allow_list == (  # this project's dataset, not all of the CDN
        AllowedHost("cdn.sanity.io", path_prefix="/images/cmsdemo/production/"),
        AllowedHost("cdn.sanity.io", path_prefix="/files/cmsdemo/production/"),
    )
    assert settings.filestack_app_secret is None and settings.cms_sync_config is None
    assert settings.sanity_base_url == "https://cmsdemo.api.sanity.io/v2025-02-19"


def test_secrets_do_not_show_in_repr(env: pytest.MonkeyPatch) -> None:
    env.setenv("FILESTACK_APP_SECRET", "app-secret-value")
    settings = load_settings()
    assert "sk-secret-token" not in repr(settings) and "app-secret-value" not in repr(settings)
    assert settings.sanity_write_token.get_secret_value() == "sk-secret-token"


def test_env_names_and_parsing(env: pytest.MonkeyPatch) -> None:
    env.setenv("SANITY_API_VERSION", "v2024-01-01")
    env.setenv("SANITY_API_HOST", "http://127.0.0.1:8800/")
    env.setenv("CMS_SYNC_ALLOWED_ASSET_HOSTS", "cdn.sanity.io, 127.0.0.1:8801")
    env.setenv("CMS_SYNC_CONFIG", "media.toml")
    env.setenv("FILESTACK_PROCESS_URL", "http://127.0.0.1:8802/process")
    settings = load_settings()
    assert settings.sanity_base_url == "http://127.0.0.1:8800/v2024-01-01"
    assert settings.asset_allow_list == (
        AllowedHost("cdn.sanity.io"),
        AllowedHost("127.0.0.1", 8801),
    )
    assert settings.cms_sync_config == Path("media.toml")


def test_dotenv_file_is_honoured(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in REQUIRED.items()))
    assert load_settings().sanity_project_id == "cmsdemo"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SANITY_PROJECT_ID", None, "SANITY_PROJECT_ID is required"),
        ("SANITY_WRITE_TOKEN", None, "SANITY_WRITE_TOKEN is required"),
        ("SANITY_PROJECT_ID", "Not A Project", "SANITY_PROJECT_ID: String should match pattern"),
        ("SANITY_API_VERSION", "latest", "SANITY_API_VERSION: must be a date like 2025-02-19"),
        ("SANITY_API_HOST", "ftp://x", "SANITY_API_HOST: must be an http(s) URL"),
        ("CMS_SYNC_ALLOWED_ASSET_HOSTS", "https://cdn.sanity.io", "CMS_SYNC_ALLOWED_ASSET_HOSTS: "),
        ("CMS_SYNC_ALLOWED_ASSET_HOSTS", " , ", "CMS_SYNC_ALLOWED_ASSET_HOSTS: needs at least one"),
        ("CMS_SYNC_STORE_CONCURRENCY", "0", "CMS_SYNC_STORE_CONCURRENCY: Input should be greater"),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    env: pytest.MonkeyPatch, name: str, value: str | None, message: str
) -> None:
    if value is None:
        env.delenv(name)
    else:
        env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text
    assert "sk-secret-token" not in text
