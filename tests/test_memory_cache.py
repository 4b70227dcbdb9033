"""Memory read budget: a turn never waits more than the budget; stale copies serve while refreshing; a
write refreshes the writer's user through the change log."""

from __future__ import annotations

import asyncio

import pytest

from actors.memory.cache import MemoryCache, MemoryChangeLog, MemoryChanges

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


async def test_a_failed_read_is_asked_again_next_turn() -> None:
    # Nothing is cached for a read that brought nothing: not an hour of "nothing" from a cached failure.
    answers = iter([ConnectionError("memory store down"), "likes tea"])

    async def fetch(user_id: str) -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = MemoryCache(fetch, ttl_s=60, budget_s=0.05)
    assert await cache.context("alice") is None
    assert await cache.context("alice") == "likes tea"


async def test_a_write_refreshes_the_users_cached_copy_at_once() -> None:
    memory = SlowMemory(latency_s=0.01)
    log = MemoryChangeLog()
    cache = MemoryCache(memory.fetch, log.since, ttl_s=3600, budget_s=0.05)
    assert await cache.context("alice") == "likes tea"
    await asyncio.sleep(0.1)  # the cache follows the change log
    memory.value["alice"] = "likes green tea"
    fetches = memory.fetches
    log.record("alice")
    log.record("carol")  # not cached here: not read until someone asks
    await asyncio.sleep(0.05)
    assert await cache.context("alice") == "likes green tea"
    assert memory.fetches == fetches + 1
    await cache.close()


async def test_a_new_change_log_makes_every_copy_stale() -> None:
    memory = SlowMemory(latency_s=0.01)
    logs = [MemoryChangeLog()]

    async def changes(log_id: str | None, seq: int) -> MemoryChanges:
        return await logs[-1].since(log_id, seq, wait_s=0.5)

    cache = MemoryCache(memory.fetch, changes, ttl_s=3600, budget_s=0.05)
    assert await cache.context("alice") == "likes tea"
    await asyncio.sleep(0.1)
    memory.value["alice"] = "likes green tea"
    logs.append(MemoryChangeLog())  # the memory actor restarted: what changed meanwhile is unknown
    await asyncio.sleep(1)
    assert await cache.context("alice") == "likes tea"  # stale, but no wait
    await asyncio.sleep(0.05)
    assert await cache.context("alice") == "likes green tea"
    await cache.close()


async def test_the_change_log_says_when_it_cannot_tell() -> None:
    log = MemoryChangeLog(keep=2)
    first = await log.since(None, 0)
    assert first.users is None  # a new follower: everything it holds may be stale
    for user in ("alice", "bob", "alice"):
        log.record(user)
    assert (await log.since(first.log_id, 1)).users == ("bob", "alice")
    assert (await log.since(first.log_id, 0)).users is None  # the first change fell out of the log
    latest = await log.since(first.log_id, 3, wait_s=1)  # nothing new: waits, then says so
    assert latest.users == () and latest.seq == 3
    assert (await log.since("another-log", 3)).users is None


async def test_an_unreachable_change_log_is_retried() -> None:
    memory = SlowMemory(latency_s=0.01)
    log = MemoryChangeLog()
    failures = [ConnectionError("actor restarting")] * 2

    async def changes(log_id: str | None, seq: int) -> MemoryChanges:
        if failures:
            raise failures.pop()
        return await log.since(log_id, seq)

    cache = MemoryCache(memory.fetch, changes, ttl_s=3600, budget_s=0.05, retry_max_s=1)
    assert await cache.context("alice") == "likes tea"
    await asyncio.sleep(5)  # two retries with backoff
    memory.value["alice"] = "moved to Paris"
    log.record("alice")
    await asyncio.sleep(0.05)
    assert await cache.context("alice") == "moved to Paris"
    await cache.close()
