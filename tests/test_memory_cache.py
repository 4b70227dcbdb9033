"""Memory read budget: a turn never waits more than the budget; stale copies serve while refreshing."""

from __future__ import annotations

import asyncio

import pytest

from actors.memory.cache import MemoryCache

pytestmark = pytest.mark.looptime


class SlowMemory:
    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.value = {"alice": "likes tea", "bob": "likes coffee"}
        self.fetches = 0
        self.fail = False

    async def fetch(self, user_id: str) -> str:
        self.fetches += 1
        await asyncio.sleep(self.latency_s)
        if self.fail:
            raise ConnectionError("memory store down")
        return self.value[user_id]


async def test_a_slow_first_read_costs_only_the_budget_and_fills_the_cache() -> None:
    memory = SlowMemory(latency_s=0.2)
    cache = MemoryCache(memory.fetch, ttl_s=60, budget_s=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cache.context("alice") is None
    assert loop.time() - started == pytest.approx(0.05)
    await asyncio.sleep(0.2)
    started = loop.time()
    assert await cache.context("alice") == "likes tea"
    assert loop.time() - started == 0
    assert await cache.context("bob") is None  # users never share an entry


async def test_a_fast_read_is_waited_for() -> None:
    cache = MemoryCache(SlowMemory(latency_s=0.01).fetch, budget_s=0.05)
    assert await cache.context("alice") == "likes tea"


async def test_stale_copy_serves_at_once_and_is_refreshed_in_the_background() -> None:
    memory = SlowMemory(latency_s=0.01)
    cache = MemoryCache(memory.fetch, ttl_s=1.0, budget_s=0.05)
    assert await cache.context("alice") == "likes tea"
    memory.value["alice"] = "likes green tea"
    await asyncio.sleep(2)
    assert await cache.context("alice") == "likes tea"  # stale, but no wait
    await asyncio.sleep(0.05)
    assert await cache.context("alice") == "likes green tea"


async def test_invalidate_refreshes_and_failures_keep_the_old_copy() -> None:
    memory = SlowMemory(latency_s=0.01)
    cache = MemoryCache(memory.fetch, ttl_s=60, budget_s=0.05)
    await cache.context("alice")
    memory.value["alice"] = "moved to Paris"
    cache.invalidate("alice")
    await asyncio.sleep(0.05)
    assert await cache.context("alice") == "moved to Paris"
    memory.fail = True
    cache.invalidate("alice")
    await asyncio.sleep(0.05)
    assert await cache.context("alice") == "moved to Paris"


async def test_a_source_that_does_not_know_yet_is_asked_again_next_turn() -> None:
    # The router's copy of the memory actor's cache: None means the actor's own read is still going.
    answers = iter([None, "likes tea"])

    async def fetch(user_id: str) -> str | None:
        return next(answers)

    cache = MemoryCache(fetch, ttl_s=60, budget_s=0.05)
    assert await cache.context("alice") is None
    assert await cache.context("alice") == "likes tea"  # not an hour of "nothing" from a cached None
