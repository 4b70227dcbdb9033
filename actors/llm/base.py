"""The LLM stage's interfaces: the request a reply is generated from, the engine interface (chat messages
in, text deltas out as they are generated), and `LLMClient`, the stage as its callers hold it.

The same `LLMRequest` goes from the session through the stage (in process or over a Serve handle) to
the engine, so the generation parameters are declared once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import Literal, NotRequired, Protocol, TypedDict


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class LLMRequest(TypedDict):
    """One reply to generate: the whole prompt and the generation limits.

    A plain dict (a TypedDict rather than a dataclass) so it pickles cheaply across a Serve hop.
    """

    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    user_id: str  # whose conversation this is (full-Letta mode answers from that user's agent)
    model: NotRequired[str]  # another model on the same server (OpenAI-compatible engine only)


# Why generation ended, with OpenAI's names: the model finished ("stop"), `max_tokens` cut the reply
# short ("length"), or the provider's safety filter did ("content_filter").
FinishReason = Literal["stop", "length", "content_filter"]


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


# A phrase stream: text events, then one `LLMFinish`.
LLMEvent = LLMTextEvent | LLMFinish


def llm_finish(reason: FinishReason) -> LLMFinish:
    return {"type": "finish", "finish_reason": reason}


class LLMEngine(ABC):
    name: str
    model: str

    @abstractmethod
    def stream(self, request: LLMRequest) -> AsyncGenerator[str | LLMFinish, None]:
        """Yield text deltas, then an `LLMFinish` saying why generation ended when the engine knows.
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
