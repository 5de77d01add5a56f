"""Client for the Sanity Content Lake HTTP API: GROQ queries and mutations.

Built on an injected ``httpx.AsyncClient`` whose base URL is
``https://<project>.api.sanity.io/v<version>`` (the ``api`` host, never ``apicdn``: the
worker reads right after a webhook) with the bearer token and timeouts set once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from cms_sync import __version__
from cms_sync.errors import InvalidResponse, RateLimited, RevisionConflict
from cms_sync.events import Events
from cms_sync.ratelimit import Limit, RateLimiter
from cms_sync.retry import RetryPolicy, guarded_mutation_is_safe, query_is_safe
from cms_sync.scrub import Scrubber
from cms_sync.settings import SanitySettings
from cms_sync.transport import MAX_RESPONSE_BYTES, Reply, json_body, raise_for_status, send

SERVICE = "Sanity"

#: Past this URL length a query is POSTed (Sanity documents ~11 KB as the GET limit).
MAX_GET_URL = 11_000


def http_client(
    settings: SanitySettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` for the Content Lake, built once per process."""
    timeout = settings.cms_sync_sanity_timeout
    return httpx.AsyncClient(
        base_url=settings.sanity_base_url,
        headers={
            "Authorization": f"Bearer {settings.sanity_write_token.get_secret_value()}",
            "User-Agent": f"cms-sync/{__version__}",
        },
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        transport=transport,
    )


def parse_error(body: Any) -> tuple[str | None, str | None]:
    """(type, description) from Sanity's error bodies.

    ``{"error": {"type", "description", "items": [{"error": {"type", ...}}]}}`` (the first
    item's type is the more specific one), or gateway ``{"statusCode", "error", "message"}``.
    """
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):
        error_type = error.get("type")
        description = error.get("description")
        items = error.get("items")
        if isinstance(items, list) and items and isinstance(items[0], dict):
            item_error = items[0].get("error")
            if isinstance(item_error, dict):
                error_type = item_error.get("type") or error_type
                description = item_error.get("description") or description
        return (
            error_type if isinstance(error_type, str) else None,
            description if isinstance(description, str) else None,
        )
    message = body.get("message")
    if isinstance(message, str):
        return (error if isinstance(error, str) else None), message
    return None, None


def conflict_index(body: Any) -> int | None:
    """The index of the mutation a 409 names (``error.items[0].index``), if any."""
    error = body.get("error") if isinstance(body, dict) else None
    items = error.get("items") if isinstance(error, dict) else None
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        return None
    index = items[0].get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else None


@dataclass(frozen=True)
class MutationResult:
    transaction_id: str
    results: list[dict[str, Any]]


class SanityClient:
    """Queries (retried on transport, 429, 5xx) and guarded mutations."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        dataset: str,
        retry: RetryPolicy | None = None,
        max_get_url: int = MAX_GET_URL,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        scrub: Scrubber | None = None,
        limiter: RateLimiter | None = None,
        events: Events | None = None,
    ) -> None:
        """
        Args:
            events: told of each request (its time and status).
            scrub: the configured secrets, scrubbed from errors built from answers (the
                request's bearer token always is).
            limiter: the process's rate limits; every request (each retry too) takes a
                ``sanity.call`` token, and a mutation a ``sanity.mutate`` one as well.
        """
        self._http = http
        self._limiter = limiter or RateLimiter.unlimited()
        self._events = events
        self._scrub = scrub
        self._dataset = dataset
        self._retry = retry or RetryPolicy()
        self._max_get_url = max_get_url
        self._max_response_bytes = max_response_bytes

    def query_request(self, query: str, params: Mapping[str, Any]) -> httpx.Request:
        """GET with JSON-encoded ``$params``; POST ``{"query", "params"}`` when too long."""
        path = f"data/query/{self._dataset}"
        url_params = {"query": query, "perspective": "published"}
        url_params.update({f"${name}": json.dumps(value) for name, value in params.items()})
        request = self._http.build_request("GET", path, params=url_params)
        if len(str(request.url)) <= self._max_get_url:
            return request
        return self._http.build_request(
            "POST",
            path,
            params={"perspective": "published"},
            json={"query": query, "params": dict(params)},
        )

    async def query(self, query: str, params: Mapping[str, Any]) -> Any:
        """Run a GROQ query against the published perspective and return ``result``.

        Raises:
            TransportError, RemoteError: after the retries allowed for reads.
        """
        request = self.query_request(query, params)
        async for attempt in self._retry.retrying(query_is_safe, operation="sanity_query"):
            with attempt:
                reply = await self._send(request, "query", Limit.SANITY_CALL)
        body = json_body(reply, service=SERVICE)
        if not isinstance(body, dict) or "result" not in body:
            raise InvalidResponse(SERVICE, reply.status, "query response has no 'result'")
        return body["result"]

    async def mutate(self, mutations: list[dict[str, Any]]) -> MutationResult:
        """Apply ``mutations`` as one transaction (visible to queries on return).

        Only retried when safe: every patch the worker sends carries ``ifRevisionID``.

        Raises:
            RevisionConflict: a document changed since it was read (``index`` says which
                mutation, when Sanity does); nothing was applied.
            TransportError, RemoteError: otherwise.
        """
        request = self._http.build_request(
            "POST",
            f"data/mutate/{self._dataset}",
            params={"returnIds": "true", "visibility": "sync"},
            json={"mutations": mutations},
        )
        async for attempt in self._retry.retrying(
            guarded_mutation_is_safe, operation="sanity_mutate"
        ):
            with attempt:
                reply = await self._send(request, "mutate", Limit.SANITY_MUTATE, Limit.SANITY_CALL)
        body = json_body(reply, service=SERVICE)
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise InvalidResponse(SERVICE, reply.status, "mutate response has no 'results'")
        return MutationResult(
            transaction_id=str(body.get("transactionId", "")), results=body["results"]
        )

    async def mutation_ready(self) -> None:
        """Wait until a mutate request could go at once under the rate limits."""
        await self._limiter.ready(Limit.SANITY_MUTATE, Limit.SANITY_CALL)

    async def _send(self, request: httpx.Request, operation: str, *limits: Limit) -> Reply:
        """One request, after the rate limits it counts against (the first is the one a
        429 is charged to)."""
        await self._limiter.acquire(*limits)
        reply = await send(
            self._http,
            request,
            service=SERVICE,
            max_bytes=self._max_response_bytes,
            scrub=self._scrub,
            events=self._events,
            operation=operation,
        )
        try:
            raise_for_status(reply, service=SERVICE, parse_error=parse_error)
        except RateLimited as exc:
            self._limiter.throttled(limits[0], exc.retry_after)
            raise
        except RevisionConflict as exc:
            exc.index = conflict_index(reply.json_or_none())
            raise
        return reply
