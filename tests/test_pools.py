"""PoolShards: many connections as several small pools, each request to the least busy."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cms_sync.emulators.http import json_response, serve
from cms_sync.pools import PoolShards

pytestmark = pytest.mark.anyio


class HeldPool(httpx.AsyncBaseTransport):
    """A pool whose requests wait for ``gate``; records its size and what it served."""

    def __init__(self, size: int, gate: asyncio.Event) -> None:
        self.size = size
        self.gate = gate
        self.served: list[str] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.served.append(request.url.path)
        await self.gate.wait()
        if request.url.path == "/broken":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))  # as a real pool: unread

    async def aclose(self) -> None:
        self.closed = True


def shards(connections: int, per_pool: int) -> tuple[PoolShards, list[HeldPool], asyncio.Event]:
    gate = asyncio.Event()
    pools: list[HeldPool] = []

    def pool(size: int) -> HeldPool:
        pools.append(HeldPool(size, gate))
        return pools[-1]

    return PoolShards(connections, per_pool=per_pool, pool=pool), pools, gate


async def test_connections_are_split_over_pools_no_larger_than_asked() -> None:
    _, pools, _ = shards(20, per_pool=8)
    assert [p.size for p in pools] == [7, 7, 6]
    assert sum(p.size for p in pools) == 20
    _, pools, _ = shards(5, per_pool=8)
    assert [p.size for p in pools] == [5]


async def test_concurrent_requests_spread_evenly_and_a_closed_response_frees_its_pool() -> None:
    sharded, pools, gate = shards(16, per_pool=8)
    async with httpx.AsyncClient(transport=sharded, base_url="http://fs") as client:
        first = [asyncio.create_task(client.get(f"/{i}")) for i in range(16)]
        await asyncio.sleep(0)
        assert sharded.in_flight == [8, 8]
        gate.set()
        await asyncio.gather(*first)
        assert sharded.in_flight == [0, 0]  # read and closed: nothing counts any longer

        gate.clear()
        gate.set()
        streamed = await client.send(client.build_request("GET", "/held"), stream=True)
        assert sorted(sharded.in_flight) == [0, 1]  # an open response keeps its pool busy
        held = sharded.in_flight.index(1)
        await client.get("/next")
        assert pools[1 - held].served[-1] == "/next"  # so the next request went elsewhere
        await streamed.aclose()
        await streamed.aclose()  # closed twice: counted once
        assert sharded.in_flight == [0, 0]


async def test_a_failed_request_does_not_stay_counted() -> None:
    sharded, _, gate = shards(4, per_pool=2)
    gate.set()
    async with httpx.AsyncClient(transport=sharded, base_url="http://fs") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/broken")
    assert sharded.in_flight == [0, 0]


async def test_closing_closes_every_pool() -> None:
    sharded, pools, _ = shards(24, per_pool=8)
    await sharded.aclose()
    assert all(p.closed for p in pools)


async def test_real_pools_answer_each_request_over_a_socket() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(200, {"path": request.url.path})

    with serve(handler) as (url, requests):
        async with httpx.AsyncClient(transport=PoolShards(4, per_pool=2)) as client:
            for round_ in range(3):
                paths = [f"/{round_}-{i}" for i in range(6)]
                answers = await asyncio.gather(*(client.get(f"{url}{p}") for p in paths))
                assert [a.json()["path"] for a in answers] == paths
    assert len(requests) == 18


def test_a_pool_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PoolShards(0)
