"""The LLM engine interface: chat messages in, text deltas out as they are generated."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import TypedDict


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class LLMEngine(ABC):
    name: str
    model: str

    @abstractmethod
    def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        user_id: str = "anonymous",
        model: str | None = None,
    ) -> AsyncGenerator[str, None]:
        """Yield text deltas. Closing the iterator early (barge-in) must stop generation.

        `user_id` says whose conversation it is; engines that keep no per-user state ignore it.
        `model` asks for another model than the configured one; an engine that loads one model
        ignores it.
        """

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load the model ahead of the first request."""

    async def probe(self) -> str | None:
        """None when the engine can answer now, else a short description of what is down (an
        engine behind an HTTP API checks it, cached so readiness probes stay cheap)."""
        return None
