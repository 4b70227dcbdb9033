"""The memory backend against a real Letta server: per-user agents, batched writes delivered once,
core memory read back, and the journaled writer end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from letta_client import APITimeoutError

from actors.conversation.events import FinishedTurn
from actors.memory.journal import TurnJournal
from actors.memory.letta import LettaConfig, LettaMemory
from actors.memory.writer import MemoryWriter, WriterConfig
from testkit.fakes import finished_turn
from tests.letta_fixtures import LettaEnv, delivered_turn_ids

pytestmark = pytest.mark.slow


def turn(user: str, n: int) -> FinishedTurn:
    return finished_turn(
        n,
        user,
        turn_id=f"resp_{user}_{n}_{time.monotonic_ns()}",
        user_text=f"My lucky number is {n}.",
        assistant_text=f"Noted: {n}.",
    )


def memory_for(env: LettaEnv, prefix: str, timeout_s: float = 60.0) -> LettaMemory:
    return LettaMemory(
        LettaConfig(
            base_url=env.base_url,
            llm_config=dict(env.llm_config),
            embedding_config=dict(env.embedding_config),
            agent_prefix=prefix,
            timeout_s=timeout_s,
        )
    )


async def test_a_batch_is_one_call_and_a_resend_is_not_delivered_twice(letta_env: LettaEnv) -> None:
    memory = memory_for(letta_env, f"t1-{time.monotonic_ns()}-")
    turns = [turn("ada", n) for n in range(5)]
    chats_before = sum(r["path"] == "/v1/chat/completions" for r in letta_env.sim.requests)
    await memory.write_turns("ada", turns)
    assert memory.message_calls == 1
    assert await delivered_turn_ids(memory, "ada") == [t.turn_id for t in turns]  # in order
    await memory.write_turns("ada", turns)  # replay after a crash
    assert memory.message_calls == 1
    assert await delivered_turn_ids(memory, "ada") == [t.turn_id for t in turns]
    assert sum(r["path"] == "/v1/chat/completions" for r in letta_env.sim.requests) > chats_before
    await memory.close()


async def test_each_user_has_their_own_agent_and_core_memory(letta_env: LettaEnv) -> None:
    memory = memory_for(letta_env, f"t2-{time.monotonic_ns()}-")
    ada, bob = await memory.agent_id("ada"), await memory.agent_id("bob")
    assert ada != bob and await memory.agent_id("ada") == ada
    await memory.client.agents.blocks.update("human", agent_id=ada, value="Ada lives in Lyon.")
    assert "human: Ada lives in Lyon." in await memory.read_memory("ada")
    assert "Lyon" not in await memory.read_memory("bob")
    # A new process finds the existing agent by name instead of creating another.
    again = memory_for(letta_env, memory.config.agent_prefix)
    assert await again.agent_id("ada") == ada
    await memory.close()
    await again.close()


async def test_journaled_writer_delivers_a_conversation_in_fewer_calls_than_turns(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    memory = memory_for(letta_env, f"t3-{time.monotonic_ns()}-")
    writer = MemoryWriter(
        TurnJournal(tmp_path / "journal.db"), memory, WriterConfig(batch_size=4, flush_interval_s=0.5)
    )
    turns = [turn("cy", n) for n in range(10)]
    for t in turns:
        await writer.submit(t)
    async with asyncio.timeout(60):
        while len(writer.journal):  # noqa: ASYNC110 - polls the journal on disk
            await asyncio.sleep(0.1)
    assert memory.message_calls <= 3
    assert await delivered_turn_ids(memory, "cy") == [t.turn_id for t in turns]
    await writer.close()
    await memory.close()


async def test_a_batch_cut_off_mid_call_and_resent_is_delivered_once(letta_env: LettaEnv) -> None:
    """The crash case: the writer's call dies while Letta is still working on it (Letta stores the
    messages only when that run ends); the replay must wait for the run, then see the turns."""
    prefix = f"t4-{time.monotonic_ns()}-"
    cut_off = memory_for(letta_env, prefix, timeout_s=0.5)
    replay = memory_for(letta_env, prefix)
    turns = [turn("di", n) for n in range(3)]
    await replay.agent_id("di")
    letta_env.sim.config.ttft_ms = 2500  # the agent's LLM call outlives the first writer's patience
    try:
        with pytest.raises(APITimeoutError):
            await cut_off.client.with_options(max_retries=0).agents.messages.create(
                await cut_off.agent_id("di"),
                messages=[{"role": "user", "content": "first try", "otid": t.turn_id} for t in turns],
            )
        await replay.write_turns("di", turns)
    finally:
        letta_env.sim.config.ttft_ms = 0
    assert replay.message_calls == 0  # the cut-off call went through; nothing was sent again
    assert await delivered_turn_ids(replay, "di") == [t.turn_id for t in turns]
    await cut_off.close()
    await replay.close()
