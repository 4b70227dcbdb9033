"""The three stage contracts a voice session depends on.

The same session runs against in-process stages (tests, benchmarks, a single process) and against
Ray Serve deployment handles (`serve_app.stage_clients`); only these signatures cross that boundary.
Items are plain dicts and bytes so they pickle cheaply between deployments.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Literal, NotRequired, Protocol, TypedDict

from actors.llm.base import ChatMessage
from actors.stt.base import STTStream


class LLMRequest(TypedDict):
    """One reply to generate: the whole prompt and the generation limits."""

    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    user_id: str  # whose conversation this is (full-Letta mode answers from that user's agent)
    model: NotRequired[str]  # another model on the same server (OpenAI-compatible engine only)


class LLMEvent(TypedDict):
    """`first_token` is sent once (its text is repeated in the first phrase); then one item per phrase."""

    type: Literal["first_token", "phrase"]
    text: str


class TranscriberClient(Protocol):
    """The STT stage as the session sees it: one stream per utterance."""

    def open_stream(self) -> STTStream: ...


class PhraseLLMClient(Protocol):
    """The LLM stage for voice turns: the reply as phrases ready to speak (`actors.conversation.chunker`)."""

    def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]: ...


class TokenLLMClient(Protocol):
    """Raw text deltas as generated, for clients that want tokens (the REST chat endpoint)."""

    def stream_tokens(self, request: LLMRequest) -> AsyncGenerator[str, None]: ...


class LLMClient(PhraseLLMClient, TokenLLMClient, Protocol):
    """What the router holds: phrases for voice turns, tokens for REST chat."""


class SynthesizerClient(Protocol):
    """The TTS stage: one phrase in, PCM16 mono at `sample_rate` out, first chunk as soon as it exists."""

    def synthesize(self, text: str, sample_rate: int) -> AsyncGenerator[bytes, None]: ...
