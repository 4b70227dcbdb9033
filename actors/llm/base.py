"""The LLM stage's interfaces: the request a reply is generated from, the engine interface (chat messages
in, text deltas out as they are generated), and `LLMClient`, the stage as its callers hold it.

The same `LLMRequest` goes from the session through the stage (in process or over a Serve handle) to
the engine, so the generation parameters are declared once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import Any, Literal, NotRequired, Protocol, TypedDict


class ToolCallFunction(TypedDict):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(TypedDict):
    """A complete call the model asked for, in OpenAI's chat-completions shape."""

    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ToolSpec(TypedDict):
    """A tool the model may call, in OpenAI's chat-completions `tools` shape:
    `{"type": "function", "function": {"name", "description", "parameters"}}`."""

    type: Literal["function"]
    function: dict[str, Any]


# What the model may do with the tools: "auto", "none", "required", or one named function
# (`{"type": "function", "function": {"name": ...}}`), as OpenAI's `tool_choice`.
ToolChoice = str | dict[str, Any]


class ChatMessage(TypedDict):
    """One message of the prompt. `content` is always text ("" for an assistant message that only
    calls tools); an assistant message may carry `tool_calls`, and each call's result follows as a
    "tool" message naming its `tool_call_id`."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: NotRequired[list[ToolCall]]
    tool_call_id: NotRequired[str]


class LLMRequest(TypedDict):
    """One reply to generate: the whole prompt and the generation limits.

    A plain dict (a TypedDict rather than a dataclass) so it pickles cheaply across a Serve hop.
    """

    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    user_id: str  # whose conversation this is (full-Letta mode answers from that user's agent)
    model: NotRequired[str]  # another model on the same server (OpenAI-compatible engine only)
    tools: NotRequired[list[ToolSpec]]  # none: the model answers in words only
    tool_choice: NotRequired[ToolChoice]
    parallel_tool_calls: NotRequired[bool]


# Why generation ended, with OpenAI's names: the model finished ("stop"), `max_tokens` cut the reply
# short ("length"), the provider's safety filter did ("content_filter"), or the model stopped to have
# the tools it called run ("tool_calls").
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class LLMFinish(TypedDict):
    """Why a stream ended normally: the stage's token and phrase streams end with exactly one; an
    engine's stream may end without one when it cannot tell (the stage then says "stop"). A plain
    dict, like the text events, so it pickles cheaply across a Serve hop."""

    type: Literal["finish"]
    finish_reason: FinishReason


class LLMTextEvent(TypedDict):
    """`first_token` is sent once (its text is repeated in the first phrase); then one item per phrase."""

    type: Literal["first_token", "phrase"]
    text: str


class LLMToolCallDelta(TypedDict):
    """A piece of a tool call as the model streams it, in OpenAI's streamed `tool_calls` shape: the
    call's first piece names its `id` and `name`; later pieces (same `index`) add to its `arguments`.
    Calls of one reply are numbered by `index` from 0; they may interleave."""

    type: Literal["tool_call"]
    index: int
    id: NotRequired[str]
    name: NotRequired[str]
    arguments: str


# A phrase stream: text events and tool-call pieces, then one `LLMFinish`.
LLMEvent = LLMTextEvent | LLMToolCallDelta | LLMFinish
# An engine's or a token stream's items: text deltas, tool-call pieces, then (usually) one `LLMFinish`.
LLMDelta = str | LLMToolCallDelta | LLMFinish


def llm_finish(reason: FinishReason) -> LLMFinish:
    return {"type": "finish", "finish_reason": reason}


class LLMEngine(ABC):
    name: str
    model: str

    @abstractmethod
    def stream(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        """Yield text deltas (and tool-call pieces when the request offers `tools`), then an
        `LLMFinish` saying why generation ended when the engine knows.
        Closing the iterator early (barge-in) must stop generation.

        `request["user_id"]` says whose conversation it is; engines that keep no per-user state ignore
        it. `request["model"]`, when present, asks for another model than the configured one; an
        engine that loads one model ignores it.
        """

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load the model ahead of the first request."""

    async def probe(self) -> str | None:
        """None when the engine can answer now, else a short description of what is down (an
        engine behind an HTTP API checks it, cached so readiness probes stay cheap)."""
        return None


class LLMClient(Protocol):
    """The LLM stage as its callers hold it: `LLMStage` in process, `RemoteLLMStage` over a Serve handle.

    Voice turns take the reply as phrases ready to speak (`actors.conversation.chunker`); REST chat
    takes raw text deltas as generated. Both end with one `LLMFinish`.
    """

    def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]: ...

    def stream_tokens(self, request: LLMRequest) -> AsyncGenerator[str | LLMFinish, None]: ...
