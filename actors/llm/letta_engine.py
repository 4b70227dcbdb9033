"""Full-Letta mode: each reply streams from the user's own Letta agent instead of the LLM directly.

Letta serves an OpenAI-compatible `POST /v1/chat/completions` where `model` is the agent id and the
stream carries the agent's reply. The agent keeps the conversation, its persona and its memory blocks
itself, so only the newest user message is sent; the agent is the same one the hybrid mode's memory
actor writes to (see `actors.memory.letta`), so a user keeps their memory across the switch.

Letta's endpoint takes no `tools` (its request model has no such field and it reads only the newest user
message, so a tool result could not reach the agent either): requests go without them and the agent
answers in words, with its own server-side tools.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from actors.llm.base import LLMDelta, LLMRequest
from actors.llm.openai_engine import OpenAILLMEngine, without_tools
from actors.memory.letta import LettaMemory

log = logging.getLogger(__name__)


class LettaAgentLLMEngine(OpenAILLMEngine):
    name = "letta"

    def __init__(self, letta: LettaMemory) -> None:
        base_url = letta.config.base_url.rstrip("/") + "/v1"
        super().__init__(api_key=letta.config.api_key, base_url=base_url, model="letta-agent")
        self.letta = letta

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        # request["model"] and any tools are ignored: the user's agent is the model (see above).
        newest = [m for m in request["messages"] if m["role"] == "user"][-1:]
        if not newest:
            raise ValueError("full-Letta mode answers a user message, and this response has none")
        agent_id = await self.letta.agent_id(request["user_id"])
        async for delta in self.stream_completion(without_tools(request), model=agent_id, messages=newest):
            yield delta

    async def _check_upstream(self) -> str | None:
        # Letta's OpenAI-compatible routes serve agents, not a model list: its health route says it is up.
        return await self.letta.server_problem(self.policy.connect_timeout_s)

    async def warmup(self) -> None:
        # Say at start when Letta is unreachable; replies fail until it answers (it may start later).
        try:
            await self.letta.client.health()
        except Exception as exc:
            log.warning("Letta at %s is not answering yet: %r", self.letta.config.base_url, exc)
