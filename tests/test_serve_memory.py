"""Memory in the served app: a real Ray cluster and a real Letta server. Turns reach the user's Letta
agent off the request path; the user's core memory reaches the LLM's system prompt, never another's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import websockets

from actors.letta_memory import LettaConfig, LettaMemory
from bench.serve_cluster import ServeRun
from tests.fakes import realtime_text_turn
from tests.letta_fixtures import LettaEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent_with_memory(letta_env: LettaEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeRun]:
    workdir = tmp_path_factory.mktemp("agent-memory")
    run = ServeRun(
        workdir,
        args={
            "stt_engine": "simulated",
            "tts_engine": "simulated",
            "llm_engine": "openai",
            "llm_base_url": letta_env.sim.base_url,
            "letta_base_url": letta_env.base_url,
            "letta_llm_config": dict(letta_env.llm_config),
            "letta_embedding_config": dict(letta_env.embedding_config),
            "memory_journal_path": str(workdir / "journal.db"),
            "memory_batch_size": 3,
            "memory_flush_interval_s": 1.0,
        },
        env={"OPENAI_API_KEY": "sim"},
    )
    try:
        run.wait_ready()
        yield run
    finally:
        run.stop()


async def text_turn(url: str, user: str, text: str) -> dict:
    async with websockets.connect(f"{url}/realtime?user={user}", max_size=None) as ws:
        await ws.recv()
        return await realtime_text_turn(ws, text)


def system_prompts_with(letta_env: LettaEnv, needle: str, since: int) -> list[str]:
    prompts = []
    for request in letta_env.sim.requests[since:]:
        if request["path"] != "/v1/chat/completions":
            continue
        messages = request["body"].get("messages", [])
        if (
            messages
            and messages[0].get("role") == "system"
            and "voice assistant" in str(messages[0]["content"])
        ):
            prompts.append(str(messages[0]["content"]))
    return [p for p in prompts if needle in p]


async def test_turns_reach_letta_and_memory_reaches_the_prompt(
    agent_with_memory: ServeRun, letta_env: LettaEnv
) -> None:
    memory = LettaMemory(
        LettaConfig(
            base_url=letta_env.base_url,
            llm_config=dict(letta_env.llm_config),
            embedding_config=dict(letta_env.embedding_config),
        )
    )
    ada = await memory.agent_id("ada")
    await memory.client.agents.blocks.update("human", agent_id=ada, value="Ada's cat is called Miso.")
    since = len(letta_env.sim.requests)
    for n in range(4):
        done = await text_turn(agent_with_memory.ws_url, "ada", f"Tell me fact number {n}.")
        assert done["status"] == "completed"
    await text_turn(agent_with_memory.ws_url, "bob", "Do you know my cat?")
    # Ada's memory is in her prompts (from the first cached read on), never in Bob's.
    assert system_prompts_with(letta_env, "Miso", since)
    bob_prompts = [
        r
        for r in letta_env.sim.requests[since:]
        if r["path"] == "/v1/chat/completions" and "my cat" in json.dumps(r["body"])
    ]
    assert bob_prompts and all("Miso" not in json.dumps(r["body"]) for r in bob_prompts)
    # Every turn reaches Ada's agent, in batches (fewer Letta calls than turns), off the request path.
    deadline = time.monotonic() + 30
    while True:
        listed = await memory.client.agents.messages.list(ada, limit=100, order="asc")
        texts = [str(m.content) for m in listed.items if m.message_type == "user_message"]
        found = [n for n in range(4) if any(f"fact number {n}" in t for t in texts)]
        if found == [0, 1, 2, 3] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert found == [0, 1, 2, 3]
    assert all(sum(f"fact number {n}." in t for t in texts) == 1 for n in range(4))
    await memory.close()
