"""LLM through the OpenAI Chat Completions API, or any server that speaks it (vLLM, Ollama, ...)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

from openai import AsyncOpenAI

from actors.llm.base import ChatMessage, LLMEngine


class OpenAILLMEngine(LLMEngine):
    name = "openai"

    def __init__(
        self, api_key: str | None = None, base_url: str | None = None, model: str = "gpt-4o-mini"
    ) -> None:
        self.model = model
        # Local OpenAI-compatible servers usually need no key, but the client insists on one.
        if api_key is None and base_url is not None:
            api_key = "unused"
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url)

    async def warmup(self) -> None:
        """Open the HTTP connection and let the SDK build its lazily made parts before the first turn:
        a cold client adds ~120-160 ms to the first reply (measured). A server without `/models`
        still leaves a warm connection; an unreachable one is the first turn's problem, not startup's."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._client.models.list()

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        user_id: str = "anonymous",
        model: str | None = None,
    ) -> AsyncIterator[str]:
        async for delta in self.stream_completion(
            model or self.model, messages, max_tokens=max_tokens, temperature=temperature
        ):
            yield delta

    async def stream_completion(
        self, model: str, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        # max_tokens rather than max_completion_tokens: every OpenAI-compatible server accepts it.
        stream = await self._client.chat.completions.create(
            model=model,
            messages=cast(Any, messages),  # ChatMessage is a subset of the SDK's message params
            max_tokens=max_tokens,
            temperature=temperature,
            stream=True,
        )
        try:
            async for chunk in stream:
                content = _delta_content(chunk)
                if content:
                    yield content
        finally:
            # Closing the response stops the server's generation (barge-in) and frees the connection.
            await stream.close()


def _delta_content(chunk: Any) -> str | None:
    # Chunks without choices exist (e.g. a final usage chunk); content is None on role/finish chunks.
    if not chunk.choices:
        return None
    return chunk.choices[0].delta.content
