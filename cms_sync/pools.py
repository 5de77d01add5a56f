"""Many connections to one host, as several small connection pools.

httpcore's pool (1.0.9, under httpx 0.28) walks every one of its connections twice for
each request, when the request arrives and when its response closes, and asks each idle
connection whether the server hung up: a socket poll apiece (upstream:
encode/httpcore#1035 and #928, unreleased). The cost grows with the pool. With 64 stores in
flight in one pool, that walk was three quarters of the worker's event loop in the
backfill bench, and the loop, not Filestack, set the pace.

:class:`PoolShards` keeps each pool small instead: ``connections`` are split over pools
of at most ``per_pool``, and each request goes to the pool with the fewest requests in
flight, so no pool makes a request wait for a connection while another has one free.
A request counts as in flight until its response is closed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

#: Connections per pool: the walk stays short, and few pools are needed.
PER_POOL = 8


def http_pool(connections: int) -> httpx.AsyncBaseTransport:
    """httpx's own transport, holding at most ``connections`` open (and kept alive)."""
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    )


class PoolShards(httpx.AsyncBaseTransport):
    def __init__(
        self,
        connections: int,
        *,
        per_pool: int = PER_POOL,
        pool: Callable[[int], httpx.AsyncBaseTransport] = http_pool,
    ) -> None:
        """
        Args:
            connections: the most open at once, over all pools.
            pool: makes one pool of the given size (tests pass their own).
        """
        if connections < 1 or per_pool < 1:
            raise ValueError("PoolShards needs at least one connection per pool")
        count = math.ceil(connections / per_pool)
        sizes = [connections // count + (i < connections % count) for i in range(count)]
        self._pools = [pool(size) for size in sizes]
        self._in_flight = [0] * count

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight per pool."""
        return list(self._in_flight)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self._in_flight[index] -= 1
            raise
        response.stream = _Counted(response.stream, lambda: self._done(index))
        return response

    def _done(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Counted(httpx.AsyncByteStream):
    """A response body that reports, once, when it is closed."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, done: Callable[[], None]
    ):
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._done is not None:
                done, self._done = self._done, None
                done()
