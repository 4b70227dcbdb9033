"""LLM through the OpenAI Chat Completions API, or any server that speaks it (vLLM, Ollama, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any, cast

import openai
from openai import AsyncOpenAI

from actors.conversation.faults import LLMStalled, LLMTimeout, LLMUnavailable
from actors.llm.base import (
    ChatMessage,
    FinishReason,
    LLMDelta,
    LLMEngine,
    LLMRequest,
    LLMToolCallDelta,
    llm_finish,
)
from actors.llm.call_policy import LLMCallPolicy, first_with_retries
from actors.probe import CachedProbe, openai_server_problem

log = logging.getLogger(__name__)


class OpenAILLMEngine(LLMEngine):
    name = "openai"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        policy: LLMCallPolicy | None = None,
        probe_ttl_s: float = 5.0,
    ) -> None:
        self.model = model
        self.policy = policy or LLMCallPolicy()
        # Local OpenAI-compatible servers usually need no key, but the client insists on one.
        if api_key is None and base_url is not None:
            api_key = "unused"
        p = self.policy
        # The SDK's own retries (2, backoff up to 8 s) would hide failures from our budget: ours decide.
        # Its read timeout is a backstop; the first-token and chunk timeouts are enforced below.
        self._client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=openai.Timeout(
                connect=p.connect_timeout_s,
                read=max(p.first_token_timeout_s, p.chunk_timeout_s),
                write=p.chunk_timeout_s,
                pool=p.connect_timeout_s,
            ),
        )
        self._probe = CachedProbe(self._check_upstream, ttl_s=probe_ttl_s)

    async def warmup(self) -> None:
        """Open the HTTP connection and let the SDK build its lazily made parts before the first turn:
        a cold client adds ~120-160 ms to the first reply (measured). A server without `/models`
        still leaves a warm connection; an unreachable one is the first turn's problem, not startup's."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._client.models.list()

    async def probe(self) -> str | None:
        return await self._probe.check()

    async def _check_upstream(self) -> str | None:
        return await openai_server_problem(self._client, "LLM", self.policy.connect_timeout_s)

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        async for delta in self.stream_completion(
            request, model=request.get("model") or self.model, messages=request["messages"]
        ):
            yield delta

    async def stream_completion(
        self, request: LLMRequest, *, model: str, messages: list[ChatMessage]
    ) -> AsyncGenerator[LLMDelta, None]:
        """Stream one chat completion of `messages` from `model`, with the request's limits and tools
        (full-Letta mode sends another model and fewer messages than the request holds): text deltas
        and tool-call pieces as they come, then the server's finish reason when it gave one."""
        finish: FinishReason | None = None  # from the chunk that carries it (the last with choices)

        async def attempt() -> tuple[Any, list[str | LLMToolCallDelta]]:
            nonlocal finish
            # max_tokens rather than max_completion_tokens: every OpenAI-compatible server accepts it.
            stream = await self._client.chat.completions.create(
                model=model,
                messages=cast(Any, [wire_message(m) for m in messages]),
                max_tokens=request["max_tokens"],
                temperature=request["temperature"],
                stream=True,
                **tool_parameters(request),
            )
            try:
                while True:
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        return stream, []  # an empty reply
                    finish = _finish_reason(chunk) or finish
                    # Text or a tool call's first piece, whichever comes first, is the first token.
                    if items := _chunk_items(chunk):
                        return stream, items
            except BaseException:
                await stream.close()
                raise

        try:
            stream, first = await first_with_retries(
                attempt, self.policy, retryable=_retryable, retry_after=_retry_after
            )
        except TimeoutError as exc:
            raise LLMTimeout(f"no first token within the budget: {exc!r}") from exc
        except Exception as exc:
            if not _retryable(exc):
                raise  # e.g. a bad key or a bad request: retrying would not help, and it is no outage
            raise LLMUnavailable(f"no first token: {exc!r}") from exc
        try:
            if first:
                for item in first:
                    yield item
                while True:
                    try:
                        # The yield stays outside the timeout: a slow consumer is not a stalled provider.
                        async with asyncio.timeout(self.policy.chunk_timeout_s):
                            chunk = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # a timeout, or the connection broke (the transport's error)
                        raise LLMStalled(f"stream broke after the first token: {exc!r}") from exc
                    finish = _finish_reason(chunk) or finish
                    for item in _chunk_items(chunk):
                        yield item
            if finish is not None:
                yield llm_finish(finish)
        finally:
            # Closing the response stops the server's generation (barge-in) and frees the connection.
            await stream.close()


def wire_message(message: ChatMessage) -> dict[str, Any]:
    """A prompt message as chat completions takes it: an assistant message that only calls tools has
    `content: null` (OpenAI's own shape; some compatible servers refuse "" beside calls)."""
    wire: dict[str, Any] = dict(message)
    if message["role"] == "assistant" and message.get("tool_calls") and not message["content"]:
        wire["content"] = None
    return wire


def tool_parameters(request: LLMRequest) -> dict[str, Any]:
    """The request's tool parameters, only when it offers tools: an empty `tools` list, or
    `tool_choice` / `parallel_tool_calls` without tools, are errors to OpenAI."""
    if not request.get("tools"):
        return {}
    params: dict[str, Any] = {"tools": request["tools"]}
    if "tool_choice" in request:
        params["tool_choice"] = request["tool_choice"]
    if "parallel_tool_calls" in request:
        params["parallel_tool_calls"] = request["parallel_tool_calls"]
    return params


def without_tools(request: LLMRequest) -> LLMRequest:
    """The request for a model that cannot be offered tools: it answers in words."""
    words_only = dict(request)
    for key in ("tools", "tool_choice", "parallel_tool_calls"):
        words_only.pop(key, None)
    return cast(LLMRequest, words_only)


def _retryable(exc: BaseException) -> bool:
    """Failures where nothing was generated and another attempt may succeed."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    # Before the first token the stream can also break with the HTTP library's own TransportError.
    return isinstance(exc, openai.APIConnectionError) or any(
        cls.__name__ == "TransportError" for cls in type(exc).__mro__
    )


def _retry_after(exc: BaseException) -> float | None:
    """Seconds a 429 or 503 asks us to wait (`retry-after-ms` or `retry-after` in seconds)."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    with contextlib.suppress(TypeError, ValueError):
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000, 0.0)
        if (seconds := headers.get("retry-after")) is not None:
            return max(float(seconds), 0.0)
    return None


def _finish_reason(chunk: Any) -> FinishReason | None:
    """The chunk's finish reason in our terms: "length" and "content_filter" end a reply short,
    "tool_calls" (or the legacy "function_call") waits for the calls' results; any other reason the
    server gives is a finished reply."""
    if not chunk.choices or chunk.choices[0].finish_reason is None:
        return None
    match chunk.choices[0].finish_reason:
        case "length":
            return "length"
        case "content_filter":
            return "content_filter"
        case "tool_calls" | "function_call":
            return "tool_calls"
        case _:
            return "stop"


def _chunk_items(chunk: Any) -> list[str | LLMToolCallDelta]:
    """The chunk's text (if any), then its tool-call pieces. Chunks without choices exist (e.g. a final
    usage chunk); content is None on role/finish chunks and on chunks that carry calls."""
    if not chunk.choices:
        return []
    delta = chunk.choices[0].delta
    items: list[str | LLMToolCallDelta] = [delta.content] if delta.content else []
    for call in delta.tool_calls or ():
        piece: LLMToolCallDelta = {"type": "tool_call", "index": call.index, "arguments": ""}
        if call.id:
            piece["id"] = call.id
        if call.function is not None:
            if call.function.name:
                piece["name"] = call.function.name
            piece["arguments"] = call.function.arguments or ""
        if "id" in piece or "name" in piece or piece["arguments"]:
            items.append(piece)
    return items
