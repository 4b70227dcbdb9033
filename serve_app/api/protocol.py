"""The OpenAI Realtime protocol subset spoken on `WS /v1/realtime` (GA event names).

The only module that spells event names: it validates client events into session commands and turns
session events (`actors.conversation.events`) into server events that the `openai` SDK's own models accept.
Our additions ride in extra fields: per-turn latency metrics (ms, as strings, since the SDK types
metadata as str → str) in `response.done.response.metadata`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal, TypeVar, assert_never

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from actors.audio.end_of_turn import PAUSE_MS, Eagerness
from actors.audio.pcm import SUPPORTED_INPUT_RATES, AudioFormatError, decode_base64_pcm, encode_base64_pcm
from actors.audio.vad import VadConfig
from actors.config import Settings
from actors.conversation.events import (
    AudioCommitted,
    CallArgumentsDelta,
    CallArgumentsDone,
    InputCleared,
    InputTimedOut,
    ItemAdded,
    ResponseAudioDelta,
    ResponseFinished,
    ResponseItemAdded,
    ResponseItemDone,
    ResponseStarted,
    ResponseTextDelta,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
    TranscriptCompleted,
    TranscriptDelta,
    UserItemAdded,
)
from actors.conversation.items import ConversationItem, FunctionCallItem, FunctionCallOutputItem, Item
from actors.conversation.session import SessionOptions
from actors.llm.base import ToolChoice, ToolSpec
from actors.tts.voices import MIN_SPEED, VoiceError, check_voice
from serve_app.api import json_input

CLIENT_EVENTS = frozenset(
    {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "response.create",
        "response.cancel",
        "conversation.item.retrieve",
        "conversation.item.delete",
        "conversation.item.truncate",
    }
)
OUTPUT_RATES = (16_000, 24_000)
MAX_TOOLS = 128  # OpenAI's limit on a session's tools
REALTIME_MAX_SPEED = 1.5  # OpenAI's Realtime range for audio.output.speed is 0.25-1.5


class ProtocolError(Exception):
    """A client event that cannot be accepted; becomes an `error` event, the session goes on."""

    def __init__(self, code: str, message: str, event_id: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id
        self.param = param


@dataclass(frozen=True)
class ProtocolLimits:
    """What a client event may carry: sizes, and the voices (OpenAI's names and `tts_voice`)."""

    max_event_bytes: int
    max_append_bytes: int
    max_text_chars: int
    tts_voice: str = "en-us"

    @classmethod
    def from_settings(cls, settings: Settings) -> ProtocolLimits:
        return cls(
            settings.max_event_bytes, settings.max_append_bytes, settings.max_text_chars, settings.tts_voice
        )


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None
    body: dict[str, Any]


def event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def _shown(value: Any, limit: int = 40) -> str:
    """A client's value quoted in an error message, cut short: an error must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_client_event(raw: str | bytes, limits: ProtocolLimits) -> ClientEvent:
    """A client frame's envelope: a JSON object of a type we serve. Its payload is validated by the
    function that reads it (`audio_of_append`, `text_of_item`, `apply_session_update`)."""
    if isinstance(raw, bytes):
        raise ProtocolError("invalid_event", "binary frames are not accepted: send JSON text events")
    if len(raw) > limits.max_event_bytes:
        raise ProtocolError(
            "event_too_large",
            f"event of {len(raw)} bytes exceeds the limit of {limits.max_event_bytes} bytes",
        )
    try:
        # Not pydantic's JSON parser: it takes NaN, lone surrogates and any nesting (see json_input).
        body = json_input.loads(raw)
    except json_input.JsonInputError as exc:
        raise ProtocolError("invalid_json", f"event {exc.reason}") from None
    if not isinstance(body, dict):
        raise ProtocolError("invalid_event", "event must be a JSON object")
    client_id = body.get("event_id")
    if not isinstance(client_id, str):
        # The SDK types event_id as a string; any other value is ignored rather than refused, and
        # dropped so that the SDK's models below do not refuse the event for it.
        client_id = None
        body.pop("event_id", None)
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "event has no string 'type' field", client_id, "type")
    # The SDK's RealtimeClientEvent union also holds events we do not serve: this says which we do.
    if kind not in CLIENT_EVENTS:
        raise ProtocolError(
            "unknown_event_type",
            f"unknown event type {_shown(kind)}; supported: {', '.join(sorted(CLIENT_EVENTS))}",
            client_id,
            "type",
        )
    return ClientEvent(kind, client_id, body)


# ------------------------------------------------------------------------------------ payload models
#
# Payloads are validated with our own pydantic models, with the SDK's field names and a note on each
# difference from the SDK's models (the router does not import the SDK: ~0.6 s per replica at start).
# Ours are strict, unlike the SDK's: JSON true is not the number 1 and "1" is not 1. They declare only
# the fields we act on; the others are accepted and not validated, so that a value the installed SDK
# does not know yet (a newer client's) cannot make us refuse a field we ignore.


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)


class AudioAppend(_Strict):
    """input_audio_buffer.append: as the SDK's `InputAudioBufferAppendEvent`."""

    audio: str


class TextPart(_Strict):
    """A content part of a user message (the SDK's `Content`): text only. The SDK also has input_audio
    and input_image, which the LLM stage cannot take, and not "text", which we have always accepted."""

    type: Literal["input_text", "text"]
    text: str  # optional in the SDK


class UserMessage(_Strict):
    """The item of a conversation.item.create (the SDK's `RealtimeConversationItemUserMessage`; its
    `ConversationItem` union also has system and assistant messages, function calls and MCP items)."""

    type: Literal["message"] = "message"  # required by the SDK; we have always assumed a message
    role: Literal["user"]
    content: list[TextPart] = Field(min_length=1)  # the SDK allows an empty list


class _PcmFormat(_Strict):
    """An audio format (the SDK's `AudioPCM`): PCM16 only, as the stages decode nothing else (the SDK
    also has G.711 u-law and A-law); the SDK says 24 kHz only, we also take 16 kHz."""

    RATES: ClassVar[tuple[int, ...]]
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: int = 24_000

    @field_validator("rate")
    @classmethod
    def _supported(cls, rate: int) -> int:
        if rate not in cls.RATES:
            raise ValueError("unsupported sample rate")  # worded in _SESSION_REFUSALS
        return rate


class InputFormat(_PcmFormat):
    RATES = SUPPORTED_INPUT_RATES


class OutputFormat(_PcmFormat):
    RATES = OUTPUT_RATES


class ServerVad(_Strict):
    """`audio.input.turn_detection` of type `server_vad` (the SDK's `ServerVad`): the turn ends after a
    silence window. The SDK leaves the ranges to the server: these are ours; the durations are integers
    in the SDK, so a fraction here would make the session.updated we send invalid."""

    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, gt=0, lt=1)
    silence_duration_ms: int | None = Field(default=None, ge=0, le=10_000)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = Field(default=None, ge=5_000, le=30_000)  # null: off


class SemanticVad(_Strict):
    """`audio.input.turn_detection` of type `semantic_vad` (the SDK's `SemanticVad`): at each pause the
    end-of-turn model judges whether the user has finished; `eagerness` caps how long an unfinished-
    sounding turn is waited for (`actors.audio.end_of_turn`)."""

    type: Literal["semantic_vad"]
    eagerness: Eagerness | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AudioInput(_Strict):
    format: InputFormat | None = None
    turn_detection: TurnDetection | None = None  # null turns server VAD off (push to talk)


class VoiceRef(_Strict):
    id: str


class AudioOutput(_Strict):
    """`audio.output` (the SDK's `RealtimeAudioConfigOutput`): format, voice, speed. Validate with
    `context={"tts_voice": ...}`."""

    format: OutputFormat | None = None
    voice: str | VoiceRef | None = None
    speed: float | None = Field(default=None, ge=MIN_SPEED, le=REALTIME_MAX_SPEED)

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, voice: str | VoiceRef | None, info: ValidationInfo) -> str | None:
        if voice is None:
            return None
        name = voice.id if isinstance(voice, VoiceRef) else voice
        try:
            return check_voice(name, (info.context or {})["tts_voice"])
        except VoiceError as exc:
            raise PydanticCustomError("unsupported_voice", str(exc)) from None


class Audio(_Strict):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class FunctionTool(_Strict):
    """A client tool in `session.tools` (the SDK's `RealtimeFunctionTool`): the client runs it. The SDK
    leaves every field optional; a tool needs a name here, in OpenAI's charset. The SDK's union also
    has `mcp` tools, which this server does not connect to for a client (its own MCP tools are server
    tools)."""

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def spec(self) -> ToolSpec:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


class NamedFunction(_Strict):
    """`tool_choice` forcing one function (the SDK's `ToolChoiceFunction`)."""

    type: Literal["function"]
    name: str = Field(min_length=1)


class SessionConfig(_Strict):
    """The `session` of a session.update (the SDK's `RealtimeSessionCreateRequest`): a field that is
    present changes the session, an absent one does not. Unlike the SDK we do not require `type`.
    Validate with `context={"max_text_chars": ...}`."""

    type: Literal["realtime", "transcription"] = "realtime"
    instructions: str = ""
    max_output_tokens: Annotated[int, Field(ge=1, le=4096)] | Literal["inf"] = "inf"
    # The SDK's list, which may not ask for both at once.
    output_modalities: list[Literal["text", "audio"]] = Field(default=["audio"], min_length=1, max_length=1)
    audio: Audio | None = None
    tools: list[FunctionTool] = Field(default_factory=list, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | NamedFunction = "auto"

    @field_validator("instructions")
    @classmethod
    def _within_limit(cls, text: str, info: ValidationInfo) -> str:
        limit = (info.context or {})["max_text_chars"]
        if len(text) > limit:
            message = "instructions have {length} characters; the limit is {limit}"
            raise PydanticCustomError("text_too_long", message, {"length": len(text), "limit": limit})
        return text


@dataclass(frozen=True)
class _Refusal:
    """Our words for an error a payload model reports at `where` (a field path; "*" is any list index)
    or under it, or only for errors of type `kind`. `message` may quote the value sent ({value}) or be
    the error's own ({msg})."""

    where: tuple[str, ...]
    code: str
    message: str
    param: str
    kind: str | None = None


def _refusal(
    exc: ValidationError, refusals: Sequence[_Refusal], event_id: str | None, by_order: bool
) -> ProtocolError:
    """One ProtocolError for a payload that failed validation: the first error in the order of
    `refusals` (`by_order`), else in the order the model reported them; its most specific refusal."""
    found: list[tuple[int, ErrorDetails]] = []
    for error in exc.errors(include_url=False):
        loc = tuple("*" if isinstance(part, int) else part for part in error["loc"])
        matching = [
            (len(r.where), r.kind is not None, i)
            for i, r in enumerate(refusals)
            if loc[: len(r.where)] == r.where and r.kind in (None, error["type"])
        ]
        found.append((max(matching)[2], error))
    index, error = min(found, key=lambda f: f[0]) if by_order else found[0]
    refusal = refusals[index]
    message = refusal.message.format(value=_shown(error["input"]), msg=error["msg"])
    return ProtocolError(refusal.code, message, event_id, refusal.param)


_ITEM_REFUSALS = (
    _Refusal(
        (),
        "invalid_item",
        "conversation.item.create needs a 'message' or 'function_call_output' item",
        "item",
    ),
    _Refusal(
        ("type",),
        "invalid_item",
        "conversation.item.create needs a 'message' or 'function_call_output' item",
        "item",
    ),
    _Refusal(("role",), "invalid_item", "only user messages can be added", "item.role"),
    _Refusal(("content",), "invalid_item", "message needs 'content' parts", "item.content"),
    _Refusal(("content", "*"), "invalid_item", "only input_text content is supported", "item.content"),
    _Refusal(("content", "*", "text"), "invalid_item", "input_text part needs 'text'", "item.content.text"),
)


def _format_refusals(direction: str, rates: tuple[int, ...]) -> tuple[_Refusal, _Refusal]:
    where = f"session.audio.{direction}.format"
    return (
        _Refusal(
            ("audio", direction, "format"),
            "unsupported_audio_format",
            f"{where}: only audio/pcm (PCM16 little-endian mono) is supported",
            where,
        ),
        _Refusal(
            ("audio", direction, "format", "rate"),
            "unsupported_sample_rate",
            f"{where}: sample rate {{value}} is not supported; use one of {list(rates)}",
            where,
        ),
    )


def _object_refusal(path: tuple[str, ...]) -> _Refusal:
    where = "session." + ".".join(path)
    return _Refusal(path, "invalid_session", f"{where} must be an object, not {{value}}", where)


def _vad_refusal(kind: str, wire: str, wanted: str) -> _Refusal:
    return _Refusal(
        ("audio", "input", "turn_detection", kind, wire),
        "invalid_session",
        f"turn_detection.{wire} must be {wanted}, not {{value}}",
        f"session.audio.input.turn_detection.{wire}",
    )


# In the order the fields were always checked: a session.update with several faults is refused for
# the first of them.
_SESSION_REFUSALS = (
    _Refusal((), "invalid_session", "session.update needs a 'session' object", "session"),
    _Refusal(
        ("type",), "invalid_session", "session.type must be 'realtime' or 'transcription'", "session.type"
    ),
    _Refusal(("instructions",), "invalid_session", "instructions must be a string", "session.instructions"),
    _Refusal(("instructions",), "text_too_long", "{msg}", "session.instructions", kind="text_too_long"),
    _Refusal(
        ("max_output_tokens",),
        "invalid_session",
        "max_output_tokens must be an integer 1..4096 or 'inf', not {value}",
        "session.max_output_tokens",
    ),
    _Refusal(
        ("output_modalities",),
        "invalid_session",
        "output_modalities must be ['audio'] or ['text']",
        "session.output_modalities",
    ),
    *(_object_refusal(path) for path in (("audio",), ("audio", "input"), ("audio", "output"))),
    *_format_refusals("input", SUPPORTED_INPUT_RATES),
    *_format_refusals("output", OUTPUT_RATES),
    _Refusal(
        ("audio", "output", "voice"),
        "invalid_session",
        "voice must be a voice name",
        "session.audio.output.voice",
    ),
    _Refusal(
        ("audio", "output", "voice"),
        "unsupported_voice",
        "{msg}",
        "session.audio.output.voice",
        kind="unsupported_voice",
    ),
    _Refusal(
        ("audio", "output", "speed"),
        "invalid_session",
        f"speed must be a number from {MIN_SPEED} to {REALTIME_MAX_SPEED}, not {{value}}",
        "session.audio.output.speed",
    ),
    _Refusal(
        ("audio", "input", "turn_detection"),
        "unsupported_turn_detection",
        "turn_detection must be null, {{'type': 'server_vad', ...}} or {{'type': 'semantic_vad', ...}}",
        "session.audio.input.turn_detection",
    ),
    _vad_refusal("server_vad", "threshold", "a number between 0 and 1"),
    _vad_refusal("server_vad", "silence_duration_ms", "an integer 0..10000"),
    _vad_refusal("server_vad", "prefix_padding_ms", "an integer 0..10000"),
    _vad_refusal("server_vad", "idle_timeout_ms", "an integer 5000..30000 or null"),
    _vad_refusal("semantic_vad", "eagerness", "'low', 'medium', 'high' or 'auto'"),
    _Refusal(
        ("tools",),
        "invalid_session",
        f"session.tools must be a list of at most {MAX_TOOLS} function tools",
        "session.tools",
    ),
    _Refusal(
        ("tools", "*"),
        "invalid_session",
        "each of session.tools must be {{'type': 'function', 'name': ..., 'description': ..., "
        "'parameters': {{...}}}} (mcp tools are not supported: this server's own tools are configured on "
        "the server), not {value}",
        "session.tools",
    ),
    _Refusal(
        ("tools", "*", "name"),
        "invalid_session",
        "a tool's name must be 1-64 letters, digits, '_' or '-', not {value}",
        "session.tools",
    ),
    _Refusal(
        ("tool_choice",),
        "invalid_session",
        "tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', 'name': ...}}, not {value}",
        "session.tool_choice",
    ),
)


def audio_of_append(event: ClientEvent, limits: ProtocolLimits) -> bytes:
    """The PCM16 of an input_audio_buffer.append."""
    # 50 of these a second per session: the model costs ~0.6 µs of the ~11 µs a 20 ms frame takes to parse.
    try:
        append = AudioAppend.model_validate(event.body)
    except ValidationError:
        raise ProtocolError(
            "invalid_audio", "input_audio_buffer.append needs 'audio': base64 PCM16", event.event_id, "audio"
        ) from None
    try:
        return decode_base64_pcm(append.audio, limits.max_append_bytes)
    except AudioFormatError as exc:
        code = "audio_too_large" if "exceeds" in str(exc) else "invalid_audio"
        raise ProtocolError(code, str(exc), event.event_id, "audio") from exc


def text_of_item(event: ClientEvent, limits: ProtocolLimits) -> str:
    """The text of a conversation.item.create: a user message of text parts."""
    try:
        item = UserMessage.model_validate(event.body.get("item"))
    except ValidationError as exc:
        raise _refusal(exc, _ITEM_REFUSALS, event.event_id, by_order=False) from None
    text = " ".join(part.text for part in item.content).strip()
    if not text:
        raise ProtocolError("invalid_item", "message text is empty", event.event_id, "item.content.text")
    if len(text) > limits.max_text_chars:
        raise ProtocolError(
            "text_too_long",
            f"message text has {len(text)} characters; the limit is {limits.max_text_chars}",
            event.event_id,
            "item.content.text",
        )
    return text


class FunctionCallOutput(_Strict):
    """A conversation.item.create's `function_call_output` item (the SDK's
    `RealtimeConversationItemFunctionCallOutput`): the client's answer to a call it was asked to make."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str


class FunctionCall(_Strict):
    """A conversation.item.create's `function_call` item (the SDK's
    `RealtimeConversationItemFunctionCall`): a call made earlier, as a client restoring a conversation
    adds it (its output follows as a `function_call_output` item). The SDK leaves `call_id` optional;
    an output can only name a call that has one."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    arguments: str


_CALL_REFUSALS = (
    _Refusal((), "invalid_item", "a function_call item needs 'call_id', 'name' and 'arguments'", "item"),
    _Refusal(("call_id",), "invalid_item", "call_id must be a non-empty string, not {value}", "item.call_id"),
    _Refusal(
        ("name",), "invalid_item", "name must be 1-64 letters, digits, '_' or '-', not {value}", "item.name"
    ),
    _Refusal(
        ("arguments",),
        "invalid_item",
        "arguments must be a string (JSON text), not {value}",
        "item.arguments",
    ),
)

_OUTPUT_REFUSALS = (
    _Refusal((), "invalid_item", "a function_call_output item needs 'call_id' and 'output'", "item"),
    _Refusal(("call_id",), "invalid_item", "call_id must be the call's id, not {value}", "item.call_id"),
    _Refusal(("output",), "invalid_item", "output must be a string, not {value}", "item.output"),
)


def created_item(event: ClientEvent, limits: ProtocolLimits) -> str | FunctionCall | FunctionCallOutput:
    """What a conversation.item.create adds: a user message's text, a call, or a call's output."""
    body = event.body.get("item")
    kind = body.get("type") if isinstance(body, dict) else None
    if kind not in ("function_call", "function_call_output"):
        return text_of_item(event, limits)
    model, refusals, field = (
        (FunctionCall, _CALL_REFUSALS, "arguments")
        if kind == "function_call"
        else (FunctionCallOutput, _OUTPUT_REFUSALS, "output")
    )
    try:
        item = model.model_validate(body)
    except ValidationError as exc:
        raise _refusal(exc, refusals, event.event_id, by_order=True) from None
    text = getattr(item, field)
    if len(text) > limits.max_text_chars:
        raise ProtocolError(
            "text_too_long",
            f"{field} has {len(text)} characters; the limit is {limits.max_text_chars}",
            event.event_id,
            f"item.{field}",
        )
    return item


class ItemRef(_Strict):
    """conversation.item.retrieve and .delete (the SDK's `ConversationItemRetrieveEvent` and
    `ConversationItemDeleteEvent`)."""

    item_id: str = Field(min_length=1)


class ItemTruncate(ItemRef):
    """conversation.item.truncate (the SDK's `ConversationItemTruncateEvent`): an assistant audio reply
    cut to its first `audio_end_ms`; its one content part is index 0."""

    content_index: Literal[0]
    audio_end_ms: int = Field(ge=0)


_ITEM_REF_REFUSALS = (
    _Refusal((), "invalid_event", "the event needs 'item_id': the id of a conversation item", "item_id"),
    _Refusal(("item_id",), "invalid_event", "item_id must be a non-empty string, not {value}", "item_id"),
    _Refusal(
        ("content_index",),
        "invalid_event",
        "content_index must be 0 (an assistant reply has one content part), not {value}",
        "content_index",
    ),
    _Refusal(
        ("audio_end_ms",),
        "invalid_event",
        "audio_end_ms must be a non-negative integer (milliseconds of the reply heard), not {value}",
        "audio_end_ms",
    ),
)


def item_ref(event: ClientEvent) -> ItemRef:
    """The payload of a conversation.item.retrieve, .delete or .truncate."""
    model = ItemTruncate if event.type == "conversation.item.truncate" else ItemRef
    try:
        return model.model_validate(event.body)
    except ValidationError as exc:
        raise _refusal(exc, _ITEM_REF_REFUSALS, event.event_id, by_order=True) from None


def item_object(item: Item) -> dict[str, Any]:
    """A conversation item as the SDK's `ConversationItem` models it."""
    if isinstance(item, FunctionCallItem):
        return {
            "id": item.id,
            "object": "realtime.item",
            "type": "function_call",
            "status": item.status,
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
        }
    if isinstance(item, FunctionCallOutputItem):
        return {
            "id": item.id,
            "object": "realtime.item",
            "type": "function_call_output",
            "status": "completed",
            "call_id": item.call_id,
            "output": item.output,
        }
    return _message_object(item)


def _message_object(item: ConversationItem) -> dict[str, Any]:
    if item.role == "user":
        part = (
            {"type": "input_audio", "transcript": item.text}
            if item.audio
            else {"type": "input_text", "text": item.text}
        )
    else:
        part = (
            {"type": "output_audio", "transcript": item.text}
            if item.audio
            else {"type": "output_text", "text": item.text}
        )
    return {
        "id": item.id,
        "object": "realtime.item",
        "type": "message",
        "role": item.role,
        "status": item.status,
        "content": [part],
    }


def item_retrieved(item: Item) -> dict[str, Any]:
    return {"type": "conversation.item.retrieved", "event_id": event_id(), "item": item_object(item)}


def item_deleted(item_id: str) -> dict[str, Any]:
    return {"type": "conversation.item.deleted", "event_id": event_id(), "item_id": item_id}


def item_truncated(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncated",
        "event_id": event_id(),
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def default_options(settings: Settings) -> SessionOptions:
    return SessionOptions(
        instructions=settings.system_prompt,
        turn_detection=VadConfig(
            threshold=settings.vad_threshold,
            silence_ms=settings.vad_silence_ms,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            min_speech_ms=settings.vad_min_speech_ms,
        ),
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        voice=settings.tts_voice,
        transcription_model=settings.stt_model,
    )


def initial_options(settings: Settings, session: dict[str, Any] | None) -> SessionOptions:
    """A new session's options: the defaults, then the configuration a client secret was minted with
    (`session` in `POST /v1/realtime/client_secrets`, validated like a session.update)."""
    options = default_options(settings)
    if not session:
        return options
    update = ClientEvent("session.update", None, {"session": session})
    return apply_session_update(options, update, ProtocolLimits.from_settings(settings))


def apply_session_update(
    options: SessionOptions,
    event: ClientEvent,
    limits: ProtocolLimits,
    server_tools: frozenset[str] = frozenset(),
) -> SessionOptions:
    """Validate a session.update and return the new options (all-or-nothing); `server_tools`: the names
    of the tools the server runs for this session, which a client tool may not take."""
    try:
        session = SessionConfig.model_validate(
            event.body.get("session"),
            context={"max_text_chars": limits.max_text_chars, "tts_voice": limits.tts_voice},
        )
    except ValidationError as exc:
        raise _refusal(exc, _SESSION_REFUSALS, event.event_id, by_order=True) from None
    sent = session.model_fields_set
    changes: dict[str, Any] = {}
    if "type" in sent:
        changes["transcription_only"] = session.type == "transcription"
    if "instructions" in sent:
        changes["instructions"] = session.instructions
    if "max_output_tokens" in sent:
        tokens = session.max_output_tokens
        changes["max_tokens"] = 4096 if tokens == "inf" else tokens
    if "output_modalities" in sent:
        changes["output_audio"] = session.output_modalities == ["audio"]
    audio_in = session.audio.input if session.audio else None
    audio_out = session.audio.output if session.audio else None
    if audio_in is not None and audio_in.format is not None:
        changes["input_sample_rate"] = audio_in.format.rate
    if audio_out is not None and audio_out.format is not None:
        changes["output_sample_rate"] = audio_out.format.rate
    if audio_out is not None and isinstance(audio_out.voice, str):  # the validator named it
        changes["voice"] = audio_out.voice
    if audio_out is not None and audio_out.speed is not None:
        changes["speed"] = audio_out.speed
    if audio_in is not None and "turn_detection" in audio_in.model_fields_set:
        changes["turn_detection"] = _vad_config(audio_in.turn_detection, options)
    if "tools" in sent:
        changes["tools"] = _client_tools(session.tools, server_tools, event.event_id)
    if "tool_choice" in sent:
        changes["tool_choice"] = _chat_tool_choice(session.tool_choice)
    new = SessionOptions(**{**options.__dict__, **changes})
    _check_tool_choice(new, server_tools, event.event_id)
    return new


def _client_tools(
    tools: list[FunctionTool], server_tools: frozenset[str], client_id: str | None
) -> tuple[ToolSpec, ...]:
    names = [tool.name for tool in tools]
    for name in names:
        if name in server_tools or names.count(name) > 1:
            why = "is a tool this server runs itself" if name in server_tools else "is declared twice"
            raise ProtocolError("invalid_session", f"tool {name!r} {why}", client_id, "session.tools")
    return tuple(tool.spec() for tool in tools)


def _chat_tool_choice(choice: str | NamedFunction) -> ToolChoice:
    """A Realtime `tool_choice` in chat-completions' shape (what the LLM request carries)."""
    if isinstance(choice, NamedFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _check_tool_choice(options: SessionOptions, server_tools: frozenset[str], client_id: str | None) -> None:
    choice = options.tool_choice
    if not isinstance(choice, dict):
        return
    name = choice["function"]["name"]
    if name not in server_tools and name not in {tool["function"]["name"] for tool in options.tools}:
        raise ProtocolError(
            "invalid_session",
            f"tool_choice names {_shown(name)}, which is not one of the session's tools",
            client_id,
            "session.tool_choice",
        )


_T = TypeVar("_T")


def _vad_config(detection: TurnDetection | None, options: SessionOptions) -> VadConfig | None:
    """The session's turn detection after a turn_detection: off for null, else the fields sent over the
    current ones; switching between server and semantic detection keeps the rest."""
    if detection is None:
        return None
    base = options.turn_detection or VadConfig()
    create = _sent_or(detection.create_response, base.create_response)
    interrupt = _sent_or(detection.interrupt_response, base.interrupt_response)
    if isinstance(detection, SemanticVad):
        return replace(
            base,
            eagerness=detection.eagerness or base.eagerness or "auto",
            pause_ms=PAUSE_MS,
            idle_timeout_ms=None,  # server VAD's only, as in OpenAI's API
            create_response=create,
            interrupt_response=interrupt,
        )
    return replace(
        base,
        eagerness=None,
        pause_ms=None,
        threshold=_sent_or(detection.threshold, base.threshold),
        silence_ms=_sent_or(detection.silence_duration_ms, base.silence_ms),
        prefix_padding_ms=_sent_or(detection.prefix_padding_ms, base.prefix_padding_ms),
        create_response=create,
        interrupt_response=interrupt,
        # Unlike the other fields, an explicit null turns it off.
        idle_timeout_ms=(
            detection.idle_timeout_ms
            if "idle_timeout_ms" in detection.model_fields_set
            else base.idle_timeout_ms
        ),
    )


def _sent_or(sent: _T | None, current: _T) -> _T:
    return current if sent is None else sent


def _turn_detection_object(vad: VadConfig | None) -> dict[str, Any] | None:
    if vad is None:
        return None
    if vad.eagerness is not None:
        return {
            "type": "semantic_vad",
            "eagerness": vad.eagerness,
            "create_response": vad.create_response,
            "interrupt_response": vad.interrupt_response,
        }
    return {
        "type": "server_vad",
        "threshold": vad.threshold,
        "silence_duration_ms": vad.silence_ms,
        "prefix_padding_ms": vad.prefix_padding_ms,
        "create_response": vad.create_response,
        "interrupt_response": vad.interrupt_response,
        "idle_timeout_ms": vad.idle_timeout_ms,
    }


def session_object(session_id: str, options: SessionOptions, model: str) -> dict[str, Any]:
    audio_input = {
        "format": {"type": "audio/pcm", "rate": options.input_sample_rate},
        "transcription": {"model": options.transcription_model},
        "turn_detection": _turn_detection_object(options.turn_detection),
    }
    if options.transcription_only:
        # OpenAI's transcription session (the SDK's RealtimeTranscriptionSessionCreateRequest).
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": session_id,
            "audio": {"input": audio_input},
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "instructions": options.instructions,
        "output_modalities": ["audio"] if options.output_audio else ["text"],
        "max_output_tokens": options.max_tokens,
        "tools": [{"type": "function", **tool["function"]} for tool in options.tools],
        "tool_choice": (
            {"type": "function", "name": options.tool_choice["function"]["name"]}
            if isinstance(options.tool_choice, dict)
            else options.tool_choice
        ),
        "audio": {
            "input": audio_input,
            "output": {
                "format": {"type": "audio/pcm", "rate": options.output_sample_rate},
                "voice": options.voice,
                "speed": options.speed,
            },
        },
    }


def session_created(session_id: str, options: SessionOptions, model: str, updated: bool = False) -> dict:
    kind = "session.updated" if updated else "session.created"
    return {"type": kind, "event_id": event_id(), "session": session_object(session_id, options, model)}


def error_event(
    code: str,
    message: str,
    client_event_id: str | None = None,
    param: str | None = None,
    kind: str = "invalid_request_error",
) -> dict:
    return {
        "type": "error",
        "event_id": event_id(),
        "error": {
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def server_events(event: SessionEvent, *, audio_output: bool) -> list[dict[str, Any]]:
    """Map one session event to the Realtime server events a client expects."""
    base = {"event_id": event_id()}
    match event:
        case SpeechStarted(item_id=item_id, audio_start_ms=ms):
            return [
                {
                    **base,
                    "type": "input_audio_buffer.speech_started",
                    "item_id": item_id,
                    "audio_start_ms": ms,
                }
            ]
        case SpeechStopped(item_id=item_id, audio_end_ms=ms):
            return [
                {**base, "type": "input_audio_buffer.speech_stopped", "item_id": item_id, "audio_end_ms": ms}
            ]
        case AudioCommitted(item_id=item_id, previous_item_id=prev):
            return [
                {**base, "type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": prev}
            ]
        case InputCleared():
            return [{**base, "type": "input_audio_buffer.cleared"}]
        case InputTimedOut(item_id=item_id, audio_start_ms=start_ms, audio_end_ms=end_ms):
            timed_out = {"item_id": item_id, "audio_start_ms": start_ms, "audio_end_ms": end_ms}
            return [{**base, "type": "input_audio_buffer.timeout_triggered", **timed_out}]
        case UserItemAdded(item_id=item_id, previous_item_id=prev, text=text):
            item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": text}],
            }
            return [{**base, "type": "conversation.item.added", "item": item, "previous_item_id": prev}]
        case TranscriptDelta(item_id=item_id, delta=delta):
            return [
                {
                    **base,
                    "type": "conversation.item.input_audio_transcription.delta",
                    "item_id": item_id,
                    "content_index": 0,
                    "delta": delta,
                }
            ]
        case TranscriptCompleted(item_id=item_id, transcript=transcript, audio_seconds=seconds):
            return [
                {
                    **base,
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": transcript,
                    "usage": {"type": "duration", "seconds": round(seconds, 3)},
                }
            ]
        case ResponseStarted(response_id=rid):
            return [
                {
                    **base,
                    "type": "response.created",
                    "response": {
                        "id": rid,
                        "object": "realtime.response",
                        "status": "in_progress",
                        "output": [],
                        "output_modalities": ["audio"] if audio_output else ["text"],
                    },
                }
            ]
        case ResponseTextDelta(response_id=rid, item_id=item_id, delta=delta, output_index=index):
            kind = "response.output_audio_transcript.delta" if audio_output else "response.output_text.delta"
            return [
                {
                    **base,
                    "type": kind,
                    "response_id": rid,
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "delta": delta,
                }
            ]
        case ResponseAudioDelta(response_id=rid, item_id=item_id, pcm16=pcm, output_index=index):
            return [
                {
                    **base,
                    "type": "response.output_audio.delta",
                    "response_id": rid,
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "delta": encode_base64_pcm(pcm),
                }
            ]
        case ResponseItemAdded(response_id=rid, output_index=index, item=item):
            added = {"response_id": rid, "output_index": index, "item": item_object(item)}
            return [{**base, "type": "response.output_item.added", **added}]
        case ResponseItemDone(response_id=rid, output_index=index, item=item):
            done = {"response_id": rid, "output_index": index, "item": item_object(item)}
            return [{**base, "type": "response.output_item.done", **done}]
        case CallArgumentsDelta(
            response_id=rid, item_id=item_id, output_index=index, call_id=call_id, delta=delta
        ):
            piece = {"response_id": rid, "item_id": item_id, "output_index": index, "call_id": call_id}
            return [{**base, "type": "response.function_call_arguments.delta", **piece, "delta": delta}]
        case CallArgumentsDone(
            response_id=rid, item_id=item_id, output_index=index, call_id=call_id, name=name, arguments=args
        ):
            call = {"response_id": rid, "item_id": item_id, "output_index": index, "call_id": call_id}
            return [
                {
                    **base,
                    "type": "response.function_call_arguments.done",
                    **call,
                    "name": name,
                    "arguments": args,
                }
            ]
        case ItemAdded(item=item, previous_item_id=prev):
            return [
                {
                    **base,
                    "type": "conversation.item.added",
                    "item": item_object(item),
                    "previous_item_id": prev,
                }
            ]
        case ResponseFinished(
            response_id=rid,
            item_id=item_id,
            status=status,
            text=text,
            reason=reason,
            metrics=metrics,
            message=message,
            output=output,
        ):
            part = (
                {"type": "output_audio", "transcript": text}
                if audio_output
                else {"type": "output_text", "text": text}
            )
            item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "assistant",
                "status": "completed" if status == "completed" else "incomplete",
                "content": [part],
            }
            details: dict[str, Any] = {"type": status}
            if status == "cancelled":
                details["reason"] = reason if reason in ("turn_detected", "client_cancelled") else None
            elif status == "incomplete":
                details["reason"] = reason if reason in ("max_output_tokens", "content_filter") else None
            elif status == "failed":
                details["error"] = {"type": "server_error", "code": reason, "message": message}
            return [
                {
                    **base,
                    "type": "response.done",
                    "response": {
                        "id": rid,
                        "object": "realtime.response",
                        "status": status,
                        "status_details": details,
                        "output": [item, *(item_object(more) for more in output)],
                        "output_modalities": ["audio"] if audio_output else ["text"],
                        "metadata": {name: f"{value:.1f}" for name, value in metrics.items()},
                    },
                }
            ]
        case SessionError(code=code, message=message, event_id=client_id, param=param):
            return [error_event(code, message, client_id, param)]
        case _:
            assert_never(event)  # a new session event needs its mapping here
