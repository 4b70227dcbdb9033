"""Smoke tests of the real Letta server through the official client, as the memory actor will use it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from letta_client import AsyncLetta

from tests.letta_fixtures import SIM_REPLY, LettaEnv

pytestmark = pytest.mark.slow


@pytest.fixture
async def client(letta_env: LettaEnv) -> AsyncIterator[AsyncLetta]:
    async with AsyncLetta(base_url=letta_env.base_url, api_key="test", timeout=60) as letta:
        yield letta


async def _create_agent(client: AsyncLetta, env: LettaEnv, agent_type: str | None = None) -> str:
    extra = {"agent_type": agent_type} if agent_type else {}
    agent = await client.agents.create(
        name=f"smoke-{time.monotonic_ns()}",
        memory_blocks=[
            {"label": "human", "value": "Nothing known yet."},
            {"label": "persona", "value": "A concise voice assistant."},
        ],
        llm_config=env.llm_config,
        embedding_config=env.embedding_config,
        **extra,  # type: ignore[arg-type]
    )
    return agent.id


async def test_health(client: AsyncLetta, letta_env: LettaEnv) -> None:
    health = await client.health()
    assert health.status == "ok"
    assert health.version == "0.16.8"


async def test_human_block_round_trip(client: AsyncLetta, letta_env: LettaEnv) -> None:
    agent_id = await _create_agent(client, letta_env)
    try:
        value = "Name: Ada. Prefers short answers. Lives in Lyon."
        t0 = time.perf_counter()
        await client.agents.blocks.update("human", agent_id=agent_id, value=value)
        print(f"blocks.update {1000 * (time.perf_counter() - t0):.0f} ms")
        block = await client.agents.blocks.retrieve("human", agent_id=agent_id)
        assert block.value == value
    finally:
        await client.agents.delete(agent_id)


@pytest.mark.parametrize("agent_type", [None, "memgpt_v2_agent"], ids=["default", "send_message"])
async def test_message_round_trip(client: AsyncLetta, letta_env: LettaEnv, agent_type: str | None) -> None:
    agent_id = await _create_agent(client, letta_env, agent_type)
    try:
        seen = len(letta_env.sim.requests)
        t0 = time.perf_counter()
        response = await client.agents.messages.create(
            agent_id, messages=[{"role": "user", "content": "Hi, I'm Ada from Lyon."}]
        )
        print(f"messages.create ({agent_type or 'default'}) {1000 * (time.perf_counter() - t0):.0f} ms")
        replies = [m for m in response.messages if m.message_type == "assistant_message"]
        assert [r.content for r in replies] == [SIM_REPLY]
        chats = [r for r in letta_env.sim.requests[seen:] if r["path"] == "/v1/chat/completions"]
        assert chats, "Letta did not call the simulated LLM"
        assert any("Ada from Lyon" in str(m.get("content")) for m in chats[0]["body"]["messages"])

        listed = await client.agents.messages.list(agent_id, limit=50)
        kinds = [m.message_type for m in listed.items]
        assert "user_message" in kinds
        assert "assistant_message" in kinds
        users = [m for m in listed.items if m.message_type == "user_message"]
        assert any("Ada from Lyon" in str(m.content) for m in users)
    finally:
        await client.agents.delete(agent_id)
