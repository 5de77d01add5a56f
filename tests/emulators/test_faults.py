"""Fault injection: Sanity's rate limits, error rates, lost answers and hangs."""

from __future__ import annotations

import threading

import httpx
import pytest

from cms_sync.emulators import SANITY_LIMITS, ContentLake, Faults, Filestack, serve
from wiring import Clock

TOKEN = "t"
MUTATE = "https://p.api.sanity.io/v2025-02-19/data/mutate/production"
QUERY = "https://p.api.sanity.io/v2025-02-19/data/query/production"


def client(lake: ContentLake) -> httpx.Client:
    return httpx.Client(
        transport=httpx.MockTransport(lake), headers={"authorization": f"Bearer {TOKEN}"}
    )


def create(n: int) -> dict[str, object]:
    return {"mutations": [{"createOrReplace": {"_id": f"d{n}", "_type": "t"}}]}


def test_sanitys_rate_limits_give_429_until_the_second_ends() -> None:
    clock = Clock(1000.0)
    lake = ContentLake(token=TOKEN, faults=Faults(rate_limits=SANITY_LIMITS, clock=clock))
    with client(lake) as http:
        mutates = [http.post(MUTATE, json=create(n)).status_code for n in range(30)]
        assert mutates == [200] * 25 + [429] * 5
        assert http.get(QUERY, params={"query": "count(*)"}).json()["result"] == 25
        clock.advance(1)
        assert http.post(MUTATE, json=create(99)).status_code == 200
        calls = [http.get(QUERY, params={"query": "1"}).status_code for _ in range(500)]
        assert calls.count(429) == 1 and calls[-1] == 429  # 500 calls/s, the mutate included
    assert len(lake.documents) == 26


def test_an_error_rate_answers_that_status_without_doing_the_work() -> None:
    lake = ContentLake(token=TOKEN, faults=Faults(statuses={503: 1.0}))
    with client(lake) as http:
        response = http.post(MUTATE, json=create(1))
    assert response.status_code == 503 and response.json()["statusCode"] == 503
    assert not lake.documents


def test_error_rates_are_seeded_and_roughly_what_was_asked() -> None:
    def statuses(seed: int) -> list[int]:
        lake = ContentLake(token=TOKEN, faults=Faults(statuses={502: 0.2, 429: 0.1}, seed=seed))
        with client(lake) as http:
            return [http.get(QUERY, params={"query": "1"}).status_code for _ in range(400)]

    first = statuses(7)
    assert first == statuses(7) and first != statuses(8)
    assert 50 <= first.count(502) <= 110 and 20 <= first.count(429) <= 65


def test_a_lost_answer_comes_after_the_work() -> None:
    lake = ContentLake(token=TOKEN, faults=Faults(lose=1.0, seed=3))
    outcomes = []
    with client(lake) as http:
        for n in range(6):
            try:
                outcomes.append(http.post(MUTATE, json=create(n)).status_code)
            except httpx.RemoteProtocolError:
                outcomes.append("hung up")
    assert set(outcomes) == {502, "hung up"}
    assert len(lake.documents) == 6  # every mutation was committed


def test_a_hang_over_a_socket_is_released_by_close() -> None:
    faults = Faults(hang=1.0, hang_seconds=30)
    fs = Filestack(faults=faults)
    with serve(fs) as (url, _):
        outcome: list[object] = []

        def call() -> None:
            try:
                httpx.post(f"{url}/process", json={}, timeout=30)
            except httpx.HTTPError as exc:
                outcome.append(type(exc))

        thread = threading.Thread(target=call)
        thread.start()
        thread.join(0.2)
        assert thread.is_alive()  # the emulator is holding the request
        fs.close()
        thread.join(10)
    assert outcome == [httpx.RemoteProtocolError] and faults.injected == {"hang": 1}


@pytest.mark.parametrize("latency", [0.0, 0.25])
def test_latency_is_slept_through_the_injected_sleep(latency: float) -> None:
    slept: list[float] = []
    lake = ContentLake(token=TOKEN, faults=Faults(latency=latency, sleep=slept.append))
    with client(lake) as http:
        http.get(QUERY, params={"query": "1"})
    assert slept == ([latency] if latency else [])


def test_a_total_latency_counts_the_emulators_own_work() -> None:
    now = [100.0]
    slept: list[float] = []

    def work_takes_a_while(lake: ContentLake) -> None:
        now[0] += 0.01

    faults = Faults(latency=0.04, latency_is_total=True, clock=lambda: now[0], sleep=slept.append)
    lake = ContentLake(token=TOKEN, faults=faults)
    lake.before_mutate = work_takes_a_while
    with client(lake) as http:
        http.post(MUTATE, json={"mutations": [{"create": {"_type": "post"}}]})
        http.get(QUERY, params={"query": "1"})
    assert slept == [pytest.approx(0.03), pytest.approx(0.04)]  # what the work left of it
