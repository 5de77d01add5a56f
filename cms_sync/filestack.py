"""Client for Filestack's store-from-URL (the ``/process`` endpoint).

Sends the same JSON body as filestack-python 4.x ``Client.upload_url`` (and
filestack-js ``storeURL``, whose top-level ``upload_tags`` it adds), but over an
injected ``httpx.AsyncClient``: the SDK itself has no timeouts, opens a connection per
call, mutates a process-global header dict on every call, and is sync only. Signing
uses the SDK's :class:`filestack.Security`, the reference for Filestack policies.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from filestack import Security
from pydantic import SecretStr

from cms_sync import __version__
from cms_sync.errors import InvalidResponse, ResponseTimeout, excerpt
from cms_sync.events import Events
from cms_sync.pools import PoolShards
from cms_sync.ratelimit import Limit, RateLimiter
from cms_sync.retry import RetryPolicy, store_is_safe
from cms_sync.scrub import Scrubber
from cms_sync.settings import FilestackSettings
from cms_sync.transport import json_body, raise_for_status, send

SERVICE = "Filestack"

#: How long a store policy stays valid: long enough for one request and its retries.
POLICY_TTL_SECONDS = 300

# Filestack's limits on upload tags.
MAX_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256

#: A whole store (connects retried before the request is sent included) takes at most this
#: many times the per-request timeout.
_DEADLINE_FACTOR = 2.0
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def http_client(
    settings: FilestackSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    connections: int = 20,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` for Filestack, built once per process.

    The read timeout is long: Filestack fetches the source file before it answers.

    Args:
        connections: the most open at once; at least the stores in flight, or stores
            queue for a connection. They are held by several small pools
            (:mod:`cms_sync.pools`): one large pool costs the event loop more per request
            the more connections it holds.
    """
    timeout = settings.cms_sync_filestack_timeout
    return httpx.AsyncClient(
        headers={"User-Agent": f"cms-sync/{__version__}"},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        transport=transport or PoolShards(connections),
    )


def parse_error(body: Any) -> tuple[str | None, str | None]:
    """Filestack errors are plain text or ``{"error": "..."}``."""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return None, body[key]
    return None, None


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Upload tags within Filestack's limits.

    Raises:
        ValueError: too many tags, or a key or value too long.
    """
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} upload tags, got {len(tags)}")
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise ValueError(f"upload tag {key!r} exceeds Filestack's limits")
    return dict(tags)


def transformation_url(url: str, handle: str, tasks: str) -> str:
    """A stored file's URL with Filestack's processing ``tasks`` (``resize=width:160``)
    before its handle, on the same host: ``https://cdn.filestackcontent.com/<tasks>/<handle>``.

    A URL that does not end in its handle is returned as it is.
    """
    base, sep, tail = url.rpartition("/")
    if not sep or tail != handle:
        return url
    return f"{base}/{tasks}/{handle}"


@dataclass(frozen=True)
class StoredFile:
    handle: str
    url: str
    size: int | None
    mime_type: str | None
    filename: str | None


def parse_store_response(body: Any, *, status: int, scrub: Scrubber | None = None) -> StoredFile:
    """Read a store response; the MIME type is ``type`` (or ``mimetype`` elsewhere).

    Raises:
        InvalidResponse: no JSON object with a ``handle`` and ``url``.
    """
    if not isinstance(body, dict) or not isinstance(body.get("handle"), str) or not body["handle"]:
        raise InvalidResponse(
            SERVICE,
            status,
            f"store response has no handle: {excerpt((scrub or Scrubber())(str(body)), 120)}",
        )
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidResponse(SERVICE, status, "store response has no url")
    size = body.get("size")
    mime = body.get("type") or body.get("mimetype")
    filename = body.get("filename")
    return StoredFile(
        handle=body["handle"],
        url=url,
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        mime_type=mime if isinstance(mime, str) else None,
        filename=filename if isinstance(filename, str) else None,
    )


class FilestackClient:
    """Store files from URLs; retried only when the request was never sent."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: str,
        process_url: str,
        location: str = "S3",
        path: str | None = None,
        app_secret: SecretStr | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        deadline: float = 120.0 * _DEADLINE_FACTOR,
        scrub: Scrubber | None = None,
        limiter: RateLimiter | None = None,
        events: Events | None = None,
    ) -> None:
        self._http = http
        self._limiter = limiter or RateLimiter.unlimited()
        self._events = events
        self._api_key = api_key
        self._process_url = process_url
        self._location = location
        self._folder = path or ""
        if self._folder and not self._folder.endswith("/"):
            self._folder += "/"
        self._app_secret = app_secret
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self.deadline = deadline
        # The key, policy and signature of each request are always scrubbed (transport).
        self._scrub = scrub or Scrubber()

    @classmethod
    def from_settings(
        cls,
        http: httpx.AsyncClient,
        settings: FilestackSettings,
        *,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        events: Events | None = None,
    ) -> FilestackClient:
        return cls(
            http,
            api_key=settings.filestack_api_key,
            process_url=settings.filestack_process_url,
            location=settings.filestack_store_location,
            path=settings.filestack_store_path or None,
            app_secret=settings.filestack_app_secret,
            retry=retry,
            deadline=settings.cms_sync_filestack_timeout * _DEADLINE_FACTOR,
            scrub=Scrubber(settings.secret_values()),
            limiter=limiter,
            events=events,
        )

    def storage_key(self, asset_id: str, extension: str | None) -> str:
        """The one storage key for a Sanity asset: ``{FILESTACK_STORE_PATH}{asset id}.{ext}``.

        A store ``path`` that does not end in ``/`` is used as the exact key, so storing
        the same asset again overwrites one object instead of adding one.
        """
        name = _KEY_UNSAFE.sub("_", asset_id)
        ext = _KEY_UNSAFE.sub("", extension or "")
        return f"{self._folder}{name}" + (f".{ext}" if ext else "")

    def store_body(
        self,
        source_url: str,
        *,
        filename: str | None,
        tags: Mapping[str, str],
        key: str | None = None,
    ) -> dict[str, Any]:
        """The ``/process`` body: SDK-compatible store task, security task, upload tags.

        ``key`` is the exact storage key; without it the store goes into the configured
        folder, where Filestack adds a random prefix.
        """
        store_params: dict[str, Any] = {"location": self._location}
        if filename:
            store_params["filename"] = filename
        if key or self._folder:
            store_params["path"] = key or self._folder
        tasks: list[dict[str, Any]] = [{"name": "store", "params": store_params}]
        if self._app_secret is not None:
            policy = {"expiry": int(self._clock()) + POLICY_TTL_SECONDS, "call": ["store"]}
            security = Security(policy, self._app_secret.get_secret_value())
            tasks.append(
                {
                    "name": "security",
                    "params": {"policy": security.policy_b64, "signature": security.signature},
                }
            )
        body: dict[str, Any] = {"apikey": self._api_key, "sources": [source_url], "tasks": tasks}
        if tags:
            body["upload_tags"] = check_tags(tags)
        return body

    async def store_url(
        self,
        source_url: str,
        *,
        filename: str | None,
        tags: Mapping[str, str],
        key: str | None = None,
    ) -> StoredFile:
        """Copy ``source_url`` into Filestack storage (at ``key``, when given).

        The whole call, retries included, ends within ``deadline`` seconds.

        Raises:
            RejectedError: Filestack refused this source or our credentials.
            InvalidResponse: a 2xx without a JSON handle.
            TransportError, UnavailableError: no answer, or overloaded.
        """
        request = self._http.build_request(
            "POST",
            self._process_url,
            json=self.store_body(source_url, filename=filename, tags=tags, key=key),
        )
        # Before the deadline starts: a store that waited out its turn was never sent, and
        # must not be taken for one whose answer was lost. A retry (of a request that was
        # never sent) takes no second token.
        await self._limiter.acquire(Limit.FILESTACK_STORE)
        try:
            async with asyncio.timeout(self.deadline):
                async for attempt in self._retry.retrying(
                    store_is_safe, operation="filestack_store"
                ):
                    with attempt:
                        reply = await send(
                            self._http,
                            request,
                            service=SERVICE,
                            scrub=self._scrub,
                            events=self._events,
                            operation="store",
                        )
        except TimeoutError:
            raise ResponseTimeout(
                SERVICE, f"store not answered within {self.deadline:g} s"
            ) from None
        raise_for_status(reply, service=SERVICE, parse_error=parse_error)
        body = json_body(reply, service=SERVICE)
        return parse_store_response(body, status=reply.status, scrub=reply.scrub)
