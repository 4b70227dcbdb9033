"""What a voice session tells its transport, independent of any wire protocol.

`serve_app.api.protocol` maps these to OpenAI Realtime events; nothing in `actors/` spells event names.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from actors.conversation.items import Item

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
    output_index: int = 0  # of the message item in the response's output


@dataclass(frozen=True)
class ResponseAudioDelta:
    response_id: str
    item_id: str
    pcm16: bytes
    output_index: int = 0


@dataclass(frozen=True)
class ResponseItemAdded:
    """A response's output gained an item after its first message: a tool call (its arguments still
    streaming), a server tool's output, or the message of the words after a round of calls."""

    response_id: str
    output_index: int
    item: Item


@dataclass(frozen=True)
class ResponseItemDone:
    response_id: str
    output_index: int
    item: Item


@dataclass(frozen=True)
class CallArgumentsDelta:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@dataclass(frozen=True)
class CallArgumentsDone:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ItemAdded:
    """An item the client added that is not a user message (a tool call's output)."""

    item: Item
    previous_item_id: str | None


@dataclass(frozen=True)
class ResponseFinished:
    response_id: str
    item_id: str
    status: ResponseStatus
    text: str  # what the first message said (up to the interruption point when cancelled)
    reason: str | None = None  # why it was cancelled or incomplete, or the public error code when it failed
    metrics: dict[str, float] = field(default_factory=dict)
    message: str | None = None  # failed: a sentence for the user (never exception text)
    # The items after the first message, in output order (tool calls, their outputs, later messages).
    output: tuple[Item, ...] = ()


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
    | ResponseItemAdded
    | ResponseItemDone
    | CallArgumentsDelta
    | CallArgumentsDone
    | ItemAdded
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
