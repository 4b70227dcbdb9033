"""One text chat turn for the REST API: the user's memory in the system prompt, tokens streamed from
the LLM stage, the exchange handed to the memory sink like a voice turn, and its latency measured.

No HTTP here: `serve_app.api.rest` maps requests and responses; this module is the turn itself.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from actors.conversation.events import FinishedTurn
from actors.conversation.metrics import TurnTimeline, observe_turn
from actors.conversation.prompt import with_memory
from actors.conversation.stages import LLMRequest, TokenLLMClient
from actors.llm.base import ChatMessage, FinishReason
from actors.memory.sink import MemorySink


@dataclass
class ChatOutcome:
    """What the turn produced; filled in while it streams, complete once the stream ends."""

    text: str = ""
    completion_tokens: int = 0  # streamed deltas: one per token for llama.cpp and OpenAI streams
    prompt_tokens: int = 0  # an estimate (characters / 4): the engines report text, not token counts
    finish_reason: FinishReason = "stop"  # the LLM's own, as OpenAI reports it
    metrics: dict[str, float] = field(default_factory=dict)


def estimate_tokens(messages: list[ChatMessage]) -> int:
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages)  # + role and separators


def prompt_messages(
    messages: list[ChatMessage], default_instructions: str, memory: str | None
) -> list[ChatMessage]:
    """One system message first (the client's system messages, else the configured instructions),
    with the user's memory added exactly as a voice turn adds it; then the dialogue in order."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or default_instructions
    dialogue = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": with_memory(system, memory)}, *dialogue]


class ChatTurn:
    def __init__(
        self,
        *,
        llm: TokenLLMClient,
        messages: list[ChatMessage],
        user_id: str,
        max_tokens: int,
        temperature: float,
        default_instructions: str,
        model: str | None = None,
        memory_sink: MemorySink | None = None,
        memory_context: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.turn_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.outcome = ChatOutcome()
        self._llm = llm
        self._messages = messages
        self._user_id = user_id
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._instructions = default_instructions
        self._model = model
        self._sink = memory_sink
        self._memory_context = memory_context

    async def stream(self) -> AsyncGenerator[str, None]:
        """Yield the reply's text deltas; closing early counts the turn as interrupted."""
        loop = asyncio.get_running_loop()
        started_wall = time.time()
        memory = await self._memory_context(self._user_id) if self._memory_context else None
        messages = prompt_messages(self._messages, self._instructions, memory)
        request: LLMRequest = {
            "messages": messages,
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
            "user_id": self._user_id,
        }
        if self._model:
            request["model"] = self._model
        out = self.outcome
        out.prompt_tokens = estimate_tokens(messages)
        timeline = TurnTimeline(llm_start=loop.time())
        parts: list[str] = []
        status = "failed"
        tokens = self._llm.stream_tokens(request)
        try:
            async for delta in tokens:
                if not isinstance(delta, str):
                    if delta["type"] == "finish":
                        out.finish_reason = delta["finish_reason"]
                    continue
                if timeline.first_token is None:
                    timeline.first_token = loop.time()
                parts.append(delta)
                out.completion_tokens += 1
                yield delta
            # Counted as the voice turns are: a reply the LLM was cut short of is incomplete.
            status = "completed" if out.finish_reason == "stop" else "incomplete"
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"  # the HTTP client went away
            raise
        finally:
            await tokens.aclose()
            out.text = "".join(parts)
            out.metrics = timeline.metrics_ms()
            observe_turn(out.metrics, status)
            self._remember(started_wall, status)

    def _remember(self, started_wall: float, status: str) -> None:
        user_text = next((m["content"] for m in reversed(self._messages) if m["role"] == "user"), "")
        if self._sink is None or not (user_text or self.outcome.text):
            return
        self._sink.submit(
            FinishedTurn(
                session_id=f"rest_{self.turn_id}",  # each REST request is its own conversation
                user_id=self._user_id,
                turn_id=self.turn_id,
                user_item_id=None,
                user_text=user_text,
                assistant_text=self.outcome.text,
                started_at=started_wall,
                ended_at=time.time(),
                interrupted=status in ("cancelled", "failed"),
                metrics=self.outcome.metrics,
            )
        )
