"""A session-wide real Letta server whose agents think and embed through the simulated OpenAI API.

Import the fixtures into conftest.py (`from tests.letta_fixtures import letta_env  # noqa: F401`).
The first session installs Letta into its cache (see testkit/letta_server.py); later ones reuse it.
Set VOICE_AGENT_SKIP_LETTA=1 to skip the tests that need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from letta_client.types import EmbeddingConfigParam, LlmConfigParam

from actors.memory.letta import LettaMemory
from testkit.letta_server import LettaServer, memory_args, sim_embedding_config, sim_llm_config
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

SIM_REPLY = "Nice to meet you, I will remember that."
SIM_MODEL = "sim-llm"


@dataclass
class LettaEnv:
    server: LettaServer
    sim: SimOpenAIServer

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def llm_config(self) -> LlmConfigParam:
        # Letta calls this endpoint with the OpenAI SDK; the simulated server answers it.
        return sim_llm_config(self.sim.base_url, SIM_MODEL)

    @property
    def embedding_config(self) -> EmbeddingConfigParam:
        return sim_embedding_config(self.sim.base_url)

    def serve_args(self, journal: Path) -> dict[str, Any]:
        """The agent's settings that put its long-term memory on this Letta server."""
        return memory_args(self.base_url, self.sim.base_url, SIM_MODEL, journal)


async def delivered_turn_ids(letta: LettaMemory, user: str) -> list[str]:
    """The turn ids of the messages in the user's agent, oldest first (repeats included, if any)."""
    agent = await letta.agent_id(user)
    listed = await letta.client.agents.messages.list(agent, limit=200, order="asc")
    return [str(m.otid) for m in listed.items if m.message_type == "user_message"]


@pytest.fixture(scope="session")
def letta_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LettaEnv]:
    if os.environ.get("VOICE_AGENT_SKIP_LETTA") == "1":
        pytest.skip("VOICE_AGENT_SKIP_LETTA=1")
    sim = start_sim_openai_server(SimOpenAIConfig(reply=SIM_REPLY))
    server = LettaServer(tmp_path_factory.mktemp("letta"))
    try:
        server.start()
        yield LettaEnv(server=server, sim=sim)
    finally:
        server.stop()
        sim.stop()
