"""Request and response bodies of the OpenAI-compatible REST API, as pydantic models.

Requests are validated with them (a failure becomes a 400 that names the field), responses are built
from them, and FastAPI generates the OpenAPI document from them (`serve_app.api.rest`): it cannot drift
from the code. Field names and shapes follow OpenAI's API so the official SDK's own models parse our
responses. Unknown request fields are accepted and ignored, as OpenAI-compatible servers usually do;
fields that would change the answer in a way we cannot honour are rejected with a message saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.audio.encode import SpeechFormat
from actors.llm.base import FinishReason, ToolCall, ToolSpec
from actors.memory.journal import USER_ID
from actors.tts.voices import MAX_SPEED, MIN_SPEED, OPENAI_VOICES

# ------------------------------------------------------------------------------------------ errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ------------------------------------------------------------------------------------------- chat


# Requests validate strictly: 0 is not false and "1" is not 1, as the document's types say.
STRICT = ConfigDict(strict=True)
STRICT_OPEN = ConfigDict(strict=True, extra="allow")


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: str


TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCallIn(BaseModel):
    model_config = STRICT_OPEN

    name: str
    arguments: str = Field(description="JSON text, as the model wrote it.")


class ToolCallIn(BaseModel):
    """A call an assistant message made, as a previous response returned it."""

    model_config = STRICT_OPEN

    id: str = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCallIn

    def call(self) -> ToolCall:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.function.name, "arguments": self.function.arguments},
        }


class ChatMessageIn(BaseModel):
    model_config = STRICT_OPEN  # e.g. `name`, ignored

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="A `tool` message answers one call of the assistant message before it (`tool_call_id`)."
    )
    content: str | list[TextPart] | None = Field(
        default=None, description="Text, or a list of text parts (images and audio are not supported)."
    )
    tool_calls: list[ToolCallIn] | None = Field(
        default=None, description="Assistant messages only: the calls it made (content may then be null)."
    )
    tool_call_id: str | None = Field(default=None, description="Tool messages only: the call it answers.")

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs `tool_call_id`: the id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"`tool_calls` belong to assistant messages, not to role {self.role!r}")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionIn(BaseModel):
    model_config = STRICT_OPEN

    name: str = Field(pattern=TOOL_NAME, description="1-64 letters, digits, _ and -.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON Schema of type object. Default: no arguments."
    )
    strict: bool | None = Field(default=None, description="Passed to the model's provider.")

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "object") != "object":
            raise ValueError(
                f"the parameters must be a JSON Schema of type 'object', got {value.get('type')!r}"
            )
        return value


class ToolIn(BaseModel):
    model_config = STRICT_OPEN

    type: Literal["function"] = Field(description="Only function tools.")
    function: FunctionIn

    def spec(self) -> ToolSpec:
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class NamedFunction(BaseModel):
    model_config = STRICT_OPEN
    name: str


class NamedToolChoice(BaseModel):
    model_config = STRICT_OPEN

    type: Literal["function"]
    function: NamedFunction


def tool_message_problem(messages: list[ChatMessageIn]) -> tuple[int, str] | None:
    """Where the conversation's calls and results do not pair up as OpenAI requires (each call of an
    assistant message answered by a `tool` message right after it, and no other `tool` messages):
    the index of the offending message and what is wrong; None when they pair up."""
    waiting: list[str] = []  # ids of the last assistant message's calls not answered yet
    for i, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in waiting:
                return i, (
                    "a message with role 'tool' must answer a call of the assistant message before it: "
                    f"no call {message.tool_call_id!r} is waiting for its result"
                )
            waiting.remove(message.tool_call_id)
            continue
        if waiting:
            return i, (
                "an assistant message with `tool_calls` must be followed by tool messages answering each "
                f"call; these have none: {', '.join(waiting)}"
            )
        if message.role == "assistant" and message.tool_calls:
            waiting = [call.id for call in message.tool_calls]
    if waiting:
        return len(messages) - 1, (
            "an assistant message with `tool_calls` must be followed by tool messages answering each "
            f"call; these have none: {', '.join(waiting)}"
        )
    return None


class StreamOptions(BaseModel):
    model_config = STRICT_OPEN
    include_usage: bool = False


def _only(name: str, why: str, ok: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """A validator rejecting values of `name` that this server cannot honour, saying why."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"`{name}` is not supported by this server: {why}")
        return value

    return check


def _valid_user(value: str | None) -> str | None:
    if value is not None and not USER_ID.match(value):
        raise ValueError(
            f"user id {value[:40]!r} is not valid: use 1-128 letters, digits and _ . @ : -, "
            "starting with a letter or digit"
        )
    return value


class ChatCompletionRequest(BaseModel):
    model_config = STRICT_OPEN  # other OpenAI parameters are accepted and ignored

    model: str = Field(
        min_length=1,
        max_length=256,
        description="Passed to an OpenAI-compatible LLM engine; an offline engine answers with the "
        "one model it has loaded and says which in the response's `model`.",
    )
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="Up to `rest_max_completion_tokens`.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Wins over `max_tokens`.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    user: str | None = Field(
        default=None,
        json_schema_extra={"pattern": USER_ID.pattern},
        description="Whose long-term memory goes into the prompt and receives the exchange. 1-128 "
        "letters, digits and _ . @ : -, starting with a letter or digit. Default: `anonymous`.",
    )
    n: int | None = Field(default=None, description="Only 1.")
    tools: list[ToolIn] | None = Field(
        default=None, description="Function tools the model may call; their calls come back to the client."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None, description="Only with tools (or `server_tools`)."
    )
    parallel_tool_calls: bool | None = Field(default=None, description="Only with tools (or `server_tools`).")
    server_tools: bool | None = Field(
        default=None,
        description="Our addition: true offers the server's own tools (webhooks, MCP tools, memory tools "
        "for a user with an identity) to the model too, and runs their calls on the server within this "
        "request; only calls to the client's `tools` come back. Default: false.",
    )
    max_tool_rounds: int | None = Field(
        default=None,
        ge=1,
        description="Our addition: rounds of server tool calls this request may run, up to "
        "`rest_max_tool_rounds`; then the model answers in words.",
    )
    functions: list[Any] | None = Field(default=None, description="Not supported: omit or send [].")
    logprobs: bool | None = Field(default=None, description="Not supported: omit or send false.")
    stop: str | list[str] | None = Field(default=None, description="Not supported: omit it.")
    response_format: dict[str, Any] | None = Field(default=None, description='Only {"type": "text"}.')

    _user = field_validator("user")(_valid_user)
    _n = field_validator("n")(_only("n", "one choice per request", lambda v: v in (None, 1)))
    _functions = field_validator("functions")(
        _only("functions", "the legacy function calling; use `tools`", lambda v: not v)
    )
    _logprobs = field_validator("logprobs")(
        _only("logprobs", "the engines do not report them", lambda v: v is not True)
    )
    _stop = field_validator("stop")(_only("stop", "the engines end replies on their own", lambda v: not v))
    _format = field_validator("response_format")(
        _only("response_format", "text replies only", lambda v: v in (None, {"type": "text"}))
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


def _absent_when_none(value: Any) -> bool:
    return value is None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="null when the reply only calls tools.")
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=_absent_when_none)


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Our addition: the turn's latency breakdown in ms (llm_ttft)."
    )


class FunctionCallDelta(BaseModel):
    name: str | None = Field(default=None, exclude_if=_absent_when_none)
    arguments: str | None = Field(default=None, exclude_if=_absent_when_none)


class ToolCallDelta(BaseModel):
    """A piece of a call: the first names its `id`, `type` and function name; later ones (same `index`)
    add to its arguments."""

    index: int
    id: str | None = Field(default=None, exclude_if=_absent_when_none)
    type: Literal["function"] | None = Field(default=None, exclude_if=_absent_when_none)
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = Field(default=None, exclude_if=_absent_when_none)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` line of a streamed completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# ----------------------------------------------------------------------------------------- models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------------------------------ audio


class VoiceRef(BaseModel):
    model_config = STRICT
    id: str


class SpeechRequest(BaseModel):
    model_config = STRICT_OPEN

    model: str = Field(min_length=1, max_length=256, description="Any value: the TTS engine is fixed.")
    input: str = Field(description="1 to `rest_max_speech_chars` characters.")
    voice: str | VoiceRef = Field(
        description="An OpenAI voice name (" + ", ".join(OPENAI_VOICES) + "), each a distinct voice of "
        "the offline engine, or the configured voice (see GET /v1/models). Custom voice ids are refused."
    )
    response_format: SpeechFormat = Field(
        default="mp3",
        description="mp3, opus (in Ogg), aac (ADTS), flac, wav (streamed header) or pcm (raw); "
        "24 kHz mono. Default: mp3.",
    )
    speed: float | None = Field(default=None, ge=MIN_SPEED, le=MAX_SPEED, description="0.25 to 4.0.")
    stream_format: Literal["audio", "sse"] | None = Field(
        default=None,
        description="audio (default): the raw byte stream; sse: `speech.audio.delta` events carrying the "
        "same bytes base64-encoded, then `speech.audio.done`.",
    )
    instructions: str | None = Field(
        default=None,
        max_length=4096,
        description="Passed to the OpenAI TTS engine; the offline engine (eSpeak) cannot act on it.",
    )

    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class SpeechAudioDelta(BaseModel):
    """One `data:` event of a speech stream with `stream_format: sse`."""

    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str = Field(description="Base64 of the next bytes of the `response_format` stream.")


class SpeechUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDone(BaseModel):
    """The last event of a speech stream with `stream_format: sse`."""

    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage = Field(description="The TTS engines count no tokens: zeros.")


class TranscriptionUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class Transcription(BaseModel):
    text: str
    usage: TranscriptionUsage | None = None


class TranscriptionSegment(BaseModel):
    """One segment of a verbose transcription, with OpenAI's fields. The engines report no token ids
    or probabilities: `tokens` is empty and `avg_logprob` and `no_speech_prob` are 0."""

    id: int
    seek: int = Field(description="Where the segment starts, in 10 ms frames.")
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = Field(description="Bytes of the text over its zlib-compressed bytes.")
    no_speech_prob: float = 0.0


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: TranscriptionUsage | None = None


class TranscriptTextDelta(BaseModel):
    """One `data:` event of a streamed transcription: the next segment's text (append it)."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDone(BaseModel):
    """The last event of a streamed transcription: the whole text."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str


TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
TRANSCRIPTION_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z]{2,4})?")

# The multipart form of POST /v1/audio/transcriptions, written out: its handler parses the form itself.
TRANSCRIPTION_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "WAV, FLAC, MP3, MP4/M4A, WebM or Ogg (Opus, Vorbis); any sample rate; mixed "
            "down to mono.",
        },
        "model": {"type": "string", "minLength": 1, "description": "Any value: the STT engine is fixed."},
        "response_format": {"type": "string", "enum": list(TRANSCRIPTION_FORMATS), "default": "json"},
        "stream": {
            "type": "boolean",
            "default": False,
            "description": "Server-sent `transcript.text.delta` events (one per segment), then "
            "`transcript.text.done`; with response_format json or text.",
        },
        "language": {
            "type": "string",
            "pattern": TRANSCRIPTION_LANGUAGE.pattern,
            "description": "ISO-639-1 code; echoed in verbose_json. The engine transcribes its own language.",
        },
        "prompt": {"type": "string", "description": "Accepted and ignored (the engines take no prompt)."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "description": "Accepted and ignored."},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": ["segment"]},
            "description": "Only segment (word timestamps are not available).",
        },
        "chunking_strategy": {"description": "Accepted and ignored: long recordings are cut at pauses."},
    },
}


# ----------------------------------------------------------------------------------- client secrets


class ExpiresAfter(BaseModel):
    model_config = STRICT

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(default=600, ge=10, le=7200, description="Lifetime: 10 s to 2 h. Default: 600.")


class ClientSecretRequest(BaseModel):
    model_config = STRICT

    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = Field(
        default=None,
        description="The Realtime session configuration every session opened with the secret starts "
        "with (what a session.update carries; `type` is `realtime`).",
    )
    user: str | None = Field(
        default=None,
        json_schema_extra={"pattern": USER_ID.pattern},
        description="The one user the secret acts as: its sessions and requests get this user's "
        "long-term memory and no one else's. Default: `anonymous` (no memory).",
    )

    _user = field_validator("user")(_valid_user)


class ClientSecret(BaseModel):
    value: str = Field(
        description="The secret: `Authorization: Bearer <value>`, or the WebSocket "
        "subprotocol `openai-insecure-api-key.<value>` from a browser."
    )
    expires_at: int = Field(description="Seconds since the epoch; sessions opened before it go on.")
    session: dict[str, Any]


class ClientSecretRevokeRequest(BaseModel):
    model_config = STRICT

    value: str = Field(min_length=1, max_length=8192, description="The client secret to revoke.")


class ClientSecretRevoked(BaseModel):
    revoked: bool = True
