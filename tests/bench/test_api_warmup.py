"""bench/api.py measures a load after each connection's first requests, which a fresh server
answers many times slower than the rest: they would count in the rate and the p99."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

Bench = Callable[[str], ModuleType]


@pytest.fixture
def bare(bench: Bench, tmp_path: Path) -> Iterator[Any]:
    server = bench("api").start_bare(tmp_path)
    yield server
    server.stop()


def test_the_first_requests_of_each_connection_are_not_measured(
    bench: Bench, bare: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four connections, ten measured requests: a connection's first request takes 50 s (a
    server starting its database pool), every other one 1 s. The load is timed from after two
    rounds of untimed requests on every connection, numbered from 10 on."""
    api = bench("api")
    clock = types.SimpleNamespace(now=100.0)  # moved only by the requests below
    monkeypatch.setattr(api, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    used: set[int] = set()
    calls: list[int] = []

    async def one(conn: Any, i: int) -> None:
        reply = await conn.request("GET", "/api/v1/healthz", {})
        assert reply.status == 200
        clock.now += 1.0 if id(conn) in used else 50.0
        used.add(id(conn))
        calls.append(i)

    rate, latencies = asyncio.run(api.run_load(bare.url, 10, 4, one))
    assert rate == 10 / 10.0  # the ten measured seconds alone
    # Each latency also spans the requests of other connections meanwhile, never a first one.
    assert len(latencies) == 10 and max(latencies) < 50.0
    assert sorted(calls[:8]) == list(range(10, 18))
    assert sorted(calls[8:]) == list(range(10))
    assert api.warmup_calls(4) == 8
