"""What a voice session tells its transport, independent of any wire protocol.

`serve_app.api.protocol` maps these to OpenAI Realtime events; nothing in `actors/` spells event names.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# How a response ended, as `ResponseFinished` reports it (and the wire's `response.done` carries it):
# "incomplete" is a reply the LLM was cut short of (`max_output_tokens`, or its content filter).
ResponseStatus = Literal["completed", "incomplete", "cancelled", "failed"]


def new_id(prefix: str) -> str:
    """A fresh id for what events name: a session, an item, a response, an STT stream."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class AudioCommitted:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True)
class InputCleared:
    pass


@dataclass(frozen=True)
class InputTimedOut:
    """Nobody spoke for `idle_timeout_ms` after the last reply was heard: the (silent) audio since is
    committed as `item_id` and the agent prompts the user."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int


@dataclass(frozen=True)
class UserItemAdded:
    item_id: str
    previous_item_id: str | None
    text: str


@dataclass(frozen=True)
class TranscriptDelta:
    item_id: str
    delta: str


@dataclass(frozen=True)
class TranscriptCompleted:
    item_id: str
    transcript: str
    audio_seconds: float = 0.0


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str
    item_id: str


@dataclass(frozen=True)
class ResponseTextDelta:
    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True)
class ResponseAudioDelta:
    response_id: str
    item_id: str
    pcm16: bytes


@dataclass(frozen=True)
class ResponseFinished:
    response_id: str
    item_id: str
    status: ResponseStatus
    text: str  # what the assistant said (up to the interruption point when cancelled)
    reason: str | None = None  # why it was cancelled or incomplete, or the public error code when it failed
    metrics: dict[str, float] = field(default_factory=dict)
    message: str | None = None  # failed: a sentence for the user (never exception text)


@dataclass(frozen=True)
class SessionError:
    code: str
    message: str
    event_id: str | None = None
    param: str | None = None


SessionEvent = (
    SpeechStarted
    | SpeechStopped
    | AudioCommitted
    | InputCleared
    | InputTimedOut
    | UserItemAdded
    | TranscriptDelta
    | TranscriptCompleted
    | ResponseStarted
    | ResponseTextDelta
    | ResponseAudioDelta
    | ResponseFinished
    | SessionError
)

# How a session hands its events to whatever carries them.
Emit = Callable[[SessionEvent], Awaitable[None]]


@dataclass(frozen=True)
class FinishedTurn:
    """One user → assistant exchange, handed to the memory sink when the response ends."""

    session_id: str
    user_id: str
    turn_id: str  # stable: the response id
    user_item_id: str | None
    user_text: str
    assistant_text: str
    started_at: float  # wall-clock seconds (time.time)
    ended_at: float
    interrupted: bool
    metrics: dict[str, Any] = field(default_factory=dict)
