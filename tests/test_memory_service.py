"""The memory service (what the memory actor runs) against a real Letta server: the memory read into
prompts refreshes after each write, graceful shutdown delivers what it holds, and bad input is refused
with a reason or recovered from with a log line, never lost silently. Plus the router's sink to the
actor: while the actor is dead it holds turns and retries."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from actors.config import Settings
from actors.memory.cache import MemoryCache
from actors.memory.journal import MAX_TURN_CHARS, JournalError
from actors.memory.letta import LettaMemory, letta_config
from actors.memory.service import MemoryService
from serve_app.memory_actor import ActorMemorySink
from testkit.fakes import finished_turn
from tests.letta_fixtures import LettaEnv, delivered_turn_ids

pytestmark = pytest.mark.slow


def settings_for(env: LettaEnv, journal: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **env.serve_args(journal),
        "memory_batch_size": 2,
        "memory_flush_interval_s": 0.5,
        "memory_cache_ttl_s": 3600,  # only a write can refresh the cache within a test
        "memory_read_budget_ms": 5000,
    }
    return Settings(**(values | overrides))


def user(prefix: str) -> str:
    return f"{prefix}{time.monotonic_ns()}"


async def wait_until_empty(service: MemoryService, limit_s: float = 30) -> None:
    async with asyncio.timeout(limit_s):
        while service.pending():  # noqa: ASYNC110 - polls the journal on disk
            await asyncio.sleep(0.1)


async def test_memory_read_into_prompts_refreshes_after_each_write(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    settings = settings_for(letta_env, tmp_path / "journal.db")
    service = await MemoryService.open(settings)
    # The read path a router runs, with the service in process instead of behind the actor.
    memory = MemoryCache(
        service.read_memory,
        service.memory_changes,
        ttl_s=settings.memory_cache_ttl_s,
        budget_s=settings.memory_read_budget_ms / 1000,
    )
    ana = user("ana")
    assert "Nothing is known" in (await memory.context(ana) or "")
    agent = await service.letta.agent_id(ana)
    # The agent (or anyone) changes the block; the TTL is an hour, yet the next write refreshes it.
    await service.letta.client.agents.blocks.update("human", agent_id=agent, value="Ana plays the cello.")
    assert "cello" not in (await memory.context(ana) or "")
    await service.submit(finished_turn(1, ana))
    await service.submit(finished_turn(2, ana))
    await wait_until_empty(service)
    for _ in range(200):  # the refreshed memory reaches the cache within 10 s
        if "cello" in (await memory.context(ana) or ""):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the memory written was never read back")
    metrics = service.metrics_text().decode()
    for name in (
        "queue_depth",
        "journal_bytes",
        "batch_turns",
        "flush_seconds",
        "lag_seconds",
        "backend_errors",
    ):
        assert f"voice_memory_{name}" in metrics
    await memory.close()
    await service.close()


def test_graceful_shutdown_delivers_what_the_service_holds(letta_env: LettaEnv, tmp_path: Path) -> None:
    # A flush window far away: only the shutdown drain can deliver these in time.
    settings = settings_for(
        letta_env, tmp_path / "journal.db", memory_flush_interval_s=3600, memory_batch_size=50
    )
    ben = user("ben")

    async def run() -> MemoryService:
        service = MemoryService(settings)
        for n in range(3):
            await service.submit(finished_turn(n, ben))
        return service

    service = asyncio.run(run())  # the loop stops, as an actor's does before its shutdown hook
    left: list[int] = []
    hook = threading.Thread(target=lambda: left.append(service.drain_blocking(60)))
    hook.start()
    hook.join(90)
    assert left == [0] and service.pending() == 0

    async def delivered() -> list[str]:
        letta = LettaMemory(letta_config(settings))
        ids = await delivered_turn_ids(letta, ben)
        await letta.close()
        return ids

    assert asyncio.run(delivered()) == [f"resp_{ben}_{n}" for n in range(3)]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (finished_turn(1, "../../etc/passwd"), "user id"),
        (finished_turn(1, "ok-user", user_text="x" * (MAX_TURN_CHARS + 1)), "limit"),
    ],
)
async def test_a_turn_that_cannot_be_stored_is_refused_with_the_reason(
    letta_env: LettaEnv, tmp_path: Path, bad: Any, reason: str
) -> None:
    service = MemoryService(settings_for(letta_env, tmp_path / "journal.db"))
    with pytest.raises(JournalError, match=reason):
        await service.submit(bad)
    await service.submit(finished_turn(2, "ok-user"))  # the service goes on
    assert service.pending() == 1
    await service.close()


async def test_a_corrupt_journal_is_kept_aside_and_the_service_starts(
    letta_env: LettaEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "journal.db"
    journal.write_bytes(b"\x00garbage" * 512)
    service = MemoryService(settings_for(letta_env, journal))
    assert "not a usable database" in caplog.text
    assert len(list(tmp_path.glob("journal.db.corrupt-*"))) == 1  # noqa: ASYNC240 - a test's own dir
    await service.submit(finished_turn(1, user("cai")))
    await wait_until_empty(service)
    await service.close()


def test_an_unwritable_journal_stops_the_service_with_the_path(letta_env: LettaEnv, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError, match=str(blocker)):
        MemoryService(settings_for(letta_env, blocker / "journal.db"))


class DeadThenAliveActor:
    """A Ray actor handle's `submit.remote` as the router sees it: dead for the first calls."""

    def __init__(self, dead_calls: int, received: list[dict]) -> None:
        self.dead_calls = dead_calls
        self.received = received
        self.submit = self

    async def remote(self, turn: dict) -> None:
        if self.dead_calls > 0:
            self.dead_calls -= 1
            raise ActorDiedError()
        self.received.append(turn)


async def test_the_router_holds_turns_while_the_actor_is_dead(caplog: pytest.LogCaptureFixture) -> None:
    received: list[dict] = []
    handles = iter([DeadThenAliveActor(2, received), DeadThenAliveActor(0, received)])
    sink = ActorMemorySink(lambda: next(handles))
    sink.submit(finished_turn(1, "dee"))
    async with asyncio.timeout(20):
        while not received:  # noqa: ASYNC110 - the sink delivers in a background task
            await asyncio.sleep(0.05)
    assert [t["turn_id"] for t in received] == ["resp_dee_1"]
    assert "holding turn resp_dee_1" in caplog.text
