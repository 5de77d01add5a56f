"""Settings, read once at the entry point from the environment (and a ``.env`` file).

This is the only module that reads the environment; everything below receives a
:class:`Settings` (or the pieces of it it needs). The settings come in sections
(Sanity, Filestack, the store, the worker, the service), each keeping its variables'
names; each command loads only the sections it needs, so ``cms-sync status`` works with
nothing but ``CMS_SYNC_DATABASE`` set, and a function that takes ``SanitySettings``
cannot reach the Filestack key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, overload

import pydantic
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cms_sync.allowlist import AllowedHost, parse_allowed_host, project_assets
from cms_sync.errors import ConfigError

S = TypeVar("S", bound="_Section")

_API_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2}|1|X)$")


def _http_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise ValueError("must be an http(s) URL")
    return url


_SECRET_FIELDS = (
    "sanity_write_token",
    "filestack_api_key",
    "filestack_app_secret",
    "sanity_webhook_secret",
    "filestack_webhook_secret",
    "cms_sync_operator_token",
)


class _Section(BaseSettings):
    """One group of settings, each named exactly as its environment variable."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    def secret_values(self) -> list[str]:
        """Every secret this section holds: what must never reach a log, the store or output."""
        values: list[str] = []
        for name in _SECRET_FIELDS:
            value = getattr(self, name, None)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value:
                values.append(value)
        return values

    @field_validator(
        "filestack_app_secret",
        "sanity_webhook_secret",
        "filestack_webhook_secret",
        "cms_sync_operator_token",
        "sanity_studio_url",
        "cms_sync_webhook_tolerance",
        "cms_sync_config",
        "cms_sync_max_connections",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class LogSettings(_Section):
    cms_sync_log_level: Literal["debug", "info", "warning", "error"] = "info"
    cms_sync_log_format: Literal["auto", "json", "console"] = "auto"


class StoreSettings(_Section):
    """Where jobs and stored-asset records live: all the operator commands need."""

    #: A path (SQLite) or a ``postgresql://`` URL (PostgreSQL).
    cms_sync_database: str = "cms-sync.db"

    @field_validator("cms_sync_database", mode="before")
    @classmethod
    def _path_is_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    #: Seconds a delivery may wait to be written (for the lock, say) before it gets 503.
    cms_sync_ingest_timeout: float = Field(default=2.0, gt=0, le=30)


class KnownSecrets(_Section):
    """Whichever secrets are configured, none required: to scrub what operators are shown."""

    sanity_write_token: SecretStr | None = None
    filestack_api_key: str | None = None
    filestack_app_secret: SecretStr | None = None
    sanity_webhook_secret: SecretStr | None = None
    filestack_webhook_secret: SecretStr | None = None
    cms_sync_operator_token: SecretStr | None = None


class SanitySettings(_Section):
    sanity_project_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    sanity_dataset: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    sanity_api_version: str = "2025-02-19"
    sanity_write_token: SecretStr
    sanity_api_host: str | None = None
    cms_sync_sanity_timeout: float = Field(default=30.0, gt=0, le=600)
    #: Client-side limits per process (Sanity allows 25 mutate requests and 500 calls a
    #: second per client IP; replicas behind one IP should share these).
    cms_sync_sanity_mutate_rate: float = Field(default=20.0, gt=0, le=1000)
    cms_sync_sanity_call_rate: float = Field(default=400.0, gt=0, le=10_000)

    @field_validator("sanity_api_version", mode="before")
    @classmethod
    def _api_version(cls, value: Any) -> Any:
        text = str(value).strip().removeprefix("v")
        if not _API_VERSION.match(text):
            raise ValueError("must be a date like 2025-02-19")
        return text

    @field_validator("sanity_api_host", mode="before")
    @classmethod
    def _api_host(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return _http_url(str(value))

    @property
    def dataset_tag(self) -> str:
        """``<project>/<dataset>``: the upload tag that marks a store as this dataset's."""
        return f"{self.sanity_project_id}/{self.sanity_dataset}"

    @property
    def sanity_base_url(self) -> str:
        """``https://<project>.api.sanity.io/v<version>`` or ``<SANITY_API_HOST>/v<version>``."""
        host = self.sanity_api_host or f"https://{self.sanity_project_id}.api.sanity.io"
        return f"{host}/v{self.sanity_api_version}"


class FilestackSettings(_Section):
    filestack_api_key: str = Field(min_length=1)
    filestack_app_secret: SecretStr | None = None
    filestack_process_url: str = "https://cdn.filestackcontent.com/process"
    filestack_store_location: str = "S3"
    #: Folder of stored files: each asset is stored at ``{this}{asset id}.{ext}``.
    filestack_store_path: str = "sanity/"
    cms_sync_filestack_timeout: float = Field(default=120.0, gt=0, le=900)
    #: Store requests a second; unset, only ``CMS_SYNC_STORE_CONCURRENCY`` bounds them.
    cms_sync_filestack_store_rate: float | None = Field(default=None, gt=0, le=10_000)

    @field_validator("filestack_process_url", mode="before")
    @classmethod
    def _process_url(cls, value: Any) -> Any:
        return _http_url(str(value))


class RequestSettings(_Section):
    """How an outbound request is retried (both services)."""

    cms_sync_retry_attempts: int = Field(default=4, ge=1, le=20)
    #: First backoff ceiling in seconds; doubles per attempt, capped at 8 s, full jitter.
    cms_sync_retry_backoff: float = Field(default=0.5, ge=0, le=60)


class MappingSettings(_Section):
    #: The media mapping's TOML file; unset, the built-in product and post mapping.
    cms_sync_config: Path | None = None


class SyncSettings(FilestackSettings, SanitySettings, RequestSettings, MappingSettings):
    """What syncing a document needs: both services, the mapping and the store policy."""

    #: None: this project's dataset on cdn.sanity.io (see ``asset_allow_list``).
    cms_sync_allowed_asset_hosts: Annotated[tuple[AllowedHost, ...] | None, NoDecode] = None
    cms_sync_store_concurrency: int = Field(default=16, ge=1, le=256)
    cms_sync_max_replans: int = Field(default=3, ge=0, le=20)
    #: The most documents read in one query or patched in one transaction (1: each alone).
    cms_sync_batch_size: int = Field(default=50, ge=1, le=200)
    #: Stores of one asset whose answer was lost (it may be stored) before giving up.
    cms_sync_ambiguous_store_max: int = Field(default=3, ge=1, le=20)
    #: First wait in seconds after such a store before storing that asset again (doubles).
    cms_sync_ambiguous_store_backoff: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("cms_sync_allowed_asset_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            entries = [part for part in value.split(",") if part.strip()]
            if not entries:
                raise ValueError("needs at least one host")
            return tuple(parse_allowed_host(part) for part in entries)
        return value

    @property
    def asset_allow_list(self) -> tuple[AllowedHost, ...]:
        """``CMS_SYNC_ALLOWED_ASSET_HOSTS``, or by default this project's dataset's assets."""
        if self.cms_sync_allowed_asset_hosts is not None:
            return self.cms_sync_allowed_asset_hosts
        return project_assets(self.sanity_project_id, self.sanity_dataset)


class JobSettings(_Section):
    """The worker: how many jobs at once, leases, retries and the dead-letter threshold."""

    cms_sync_workers: int = Field(default=4, ge=1, le=64)
    cms_sync_job_lease: float = Field(default=60.0, ge=1, le=3600)
    cms_sync_job_max_attempts: int = Field(default=11, ge=1, le=100)
    cms_sync_job_backoff: float = Field(default=10.0, ge=0, le=3600)
    cms_sync_job_backoff_max: float = Field(default=900.0, ge=0, le=86400)
    cms_sync_read_retries: int = Field(default=3, ge=0, le=20)
    cms_sync_read_retry_delay: float = Field(default=2.0, ge=0, le=300)
    cms_sync_poll_interval: float = Field(default=1.0, gt=0, le=60)
    cms_sync_shutdown_grace: float = Field(default=25.0, ge=0, le=600)


class Settings(SyncSettings, StoreSettings, JobSettings, LogSettings):
    """Every setting: what ``serve`` (and ``replay --now``) need."""

    # -- the webhook service (cms-sync serve) ------------------------------------------
    sanity_webhook_secret: SecretStr | None = None
    cms_sync_host: str = "127.0.0.1"
    cms_sync_port: int = Field(default=8080, ge=0, le=65535)
    cms_sync_webhook_max_body: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Most documents one delivery may name (a legacy body lists ids; 413 above).
    cms_sync_webhook_max_documents: int = Field(default=1000, ge=1, le=100_000)
    #: Refuse signatures older than this many seconds; off by default (Sanity retries for
    #: 30 minutes and may not re-sign).
    cms_sync_webhook_tolerance: float | None = Field(default=None, gt=0)
    #: The secret of the Filestack webhook (developer portal > Webhooks; not the app
    #: secret). Unset: ``POST /webhooks/filestack`` answers 404.
    filestack_webhook_secret: SecretStr | None = None
    #: Refuse Filestack signatures further than this many seconds from now.
    cms_sync_filestack_webhook_max_age: float = Field(default=900.0, ge=30, le=86_400)
    #: Connections served at once (503 above); default: the open-files limit less a reserve.
    cms_sync_max_connections: int | None = Field(default=None, ge=16, le=1_000_000)
    #: Seconds a connection has to deliver a whole request (headers and body).
    cms_sync_read_timeout: float = Field(default=5.0, gt=0, le=300)
    #: HTTP/1.1 parser: httptools (C, the default) or h11 (pure Python, uvicorn's fallback).
    cms_sync_http_parser: Literal["httptools", "h11"] = "httptools"
    # -- the operator page (/operator) -------------------------------------------------
    #: The token an operator logs in with; unset, ``/operator`` answers 404.
    cms_sync_operator_token: SecretStr | None = None
    #: Hours an operator's session lasts.
    cms_sync_operator_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    #: Mark the session cookie ``Secure`` (only sent over HTTPS). Off only for plain-HTTP
    #: local use: behind a TLS-terminating proxy, leave it on.
    cms_sync_operator_secure_cookie: bool = True
    #: The Studio's URL, for links to documents (``{url}/intent/edit/id={id}``); optional.
    sanity_studio_url: str | None = None

    @field_validator("cms_sync_operator_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 24:
            raise ValueError("must be at least 24 characters (try: openssl rand -base64 32)")
        return value

    @field_validator("sanity_studio_url", mode="before")
    @classmethod
    def _studio_url(cls, value: Any) -> Any:
        return None if value is None else _http_url(str(value))


class SyncCommandSettings(SyncSettings, StoreSettings, LogSettings):
    """``cms-sync sync``: both services and the store, not the webhook or worker settings."""


class BackfillFeedSettings(
    SanitySettings, RequestSettings, MappingSettings, StoreSettings, LogSettings
):
    """``backfill`` without ``--now``: Sanity to sweep and the store to queue into; the
    service's workers, which hold the Filestack key, run the jobs."""


class OperatorSettings(StoreSettings, KnownSecrets, LogSettings):
    """``status``, ``failures``, ``replay`` (without ``--now``): only the database."""


def _describe(err: Any) -> str:
    name = str(err["loc"][0]).upper() if err["loc"] else "settings"
    if err["type"] == "missing":
        return f"{name} is required"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{name}: {msg}"


@overload
def load_settings(**overrides: Any) -> Settings: ...
@overload
def load_settings(section: type[S], **overrides: Any) -> S: ...
def load_settings(section: type[_Section] = Settings, **overrides: Any) -> _Section:
    """Read one section of the settings (all of them by default) from the environment.

    Raises:
        ConfigError: one line naming the first missing or invalid variable.
    """
    try:
        return section(**overrides)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0]) + more) from None


def settings_problems(section: type[_Section] = Settings, **overrides: Any) -> list[str]:
    """Every missing or invalid variable of ``section``, one line each (none: it loads)."""
    try:
        section(**overrides)
    except pydantic.ValidationError as exc:
        return [_describe(error) for error in exc.errors()]
    return []
