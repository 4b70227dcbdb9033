"""A session-wide real Letta server whose agents think and embed through the simulated OpenAI API.

Import the fixtures into conftest.py (`from tests.letta_fixtures import letta_env  # noqa: F401`).
The first session installs Letta into its cache (see bench/letta_server.py); later ones reuse it.
Set VOICE_AGENT_SKIP_LETTA=1 to skip the tests that need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from letta_client.types import EmbeddingConfigParam, LlmConfigParam

from bench.letta_server import LettaServer
from bench.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

SIM_REPLY = "Nice to meet you, I will remember that."
SIM_MODEL = "sim-llm"
EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDING_DIM = 1536


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
        return {
            "model": SIM_MODEL,
            "model_endpoint_type": "openai",
            "model_endpoint": self.sim.base_url,
            "context_window": 32_000,
        }

    @property
    def embedding_config(self) -> EmbeddingConfigParam:
        return {
            "embedding_endpoint_type": "openai",
            "embedding_endpoint": self.sim.base_url,
            "embedding_model": EMBEDDING_MODEL,
            "embedding_dim": EMBEDDING_DIM,
        }


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
