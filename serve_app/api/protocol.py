"""The OpenAI Realtime protocol subset spoken on `WS /v1/realtime` (GA event names).

The only module that spells event names: it validates client events into session commands and turns
session events (`actors.conversation.events`) into server events that the `openai` SDK's own models accept.
Our additions ride in extra fields: per-turn latency metrics (ms, as strings, since the SDK types
metadata as str → str) in `response.done.response.metadata`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, assert_never

from actors.audio.pcm import SUPPORTED_INPUT_RATES, AudioFormatError, decode_base64_pcm, encode_base64_pcm
from actors.audio.vad import VadConfig
from actors.config import Settings
from actors.conversation.events import (
    AudioCommitted,
    InputCleared,
    ResponseAudioDelta,
    ResponseFinished,
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
from actors.conversation.session import SessionOptions
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
    }
)
OUTPUT_RATES = (16_000, 24_000)


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
    max_event_bytes: int
    max_append_bytes: int
    max_text_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ProtocolLimits:
        return cls(settings.max_event_bytes, settings.max_append_bytes, settings.max_text_chars)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not the number 1


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_client_event(raw: str | bytes, limits: ProtocolLimits) -> ClientEvent:
    if isinstance(raw, bytes):
        raise ProtocolError("invalid_event", "binary frames are not accepted: send JSON text events")
    if len(raw) > limits.max_event_bytes:
        raise ProtocolError(
            "event_too_large",
            f"event of {len(raw)} bytes exceeds the limit of {limits.max_event_bytes} bytes",
        )
    try:
        body = json_input.loads(raw)
    except json_input.JsonInputError as exc:
        raise ProtocolError("invalid_json", f"event {exc.reason}") from None
    if not isinstance(body, dict):
        raise ProtocolError("invalid_event", "event must be a JSON object")
    client_id = body.get("event_id") if isinstance(body.get("event_id"), str) else None
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "event has no string 'type' field", client_id, "type")
    if kind not in CLIENT_EVENTS:
        raise ProtocolError(
            "unknown_event_type",
            f"unknown event type {_shown(kind)}; supported: {', '.join(sorted(CLIENT_EVENTS))}",
            client_id,
            "type",
        )
    return ClientEvent(kind, client_id, body)


def audio_of_append(event: ClientEvent, limits: ProtocolLimits) -> bytes:
    audio = event.body.get("audio")
    if not isinstance(audio, str):
        raise ProtocolError(
            "invalid_audio", "input_audio_buffer.append needs 'audio': base64 PCM16", event.event_id, "audio"
        )
    try:
        return decode_base64_pcm(audio, limits.max_append_bytes)
    except AudioFormatError as exc:
        code = "audio_too_large" if "exceeds" in str(exc) else "invalid_audio"
        raise ProtocolError(code, str(exc), event.event_id, "audio") from exc


def text_of_item(event: ClientEvent, limits: ProtocolLimits) -> str:
    item = event.body.get("item")
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise ProtocolError(
            "invalid_item", "conversation.item.create needs a 'message' item", event.event_id, "item"
        )
    if item.get("role") != "user":
        raise ProtocolError("invalid_item", "only user messages can be added", event.event_id, "item.role")
    parts = item.get("content")
    if not isinstance(parts, list) or not parts:
        raise ProtocolError("invalid_item", "message needs 'content' parts", event.event_id, "item.content")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "text"):
            raise ProtocolError(
                "invalid_item", "only input_text content is supported", event.event_id, "item.content"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise ProtocolError(
                "invalid_item", "input_text part needs 'text'", event.event_id, "item.content.text"
            )
        texts.append(text)
    text = " ".join(texts).strip()
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


def _rate(fmt: Any, where: str, allowed: tuple[int, ...], event: ClientEvent) -> int | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type", "audio/pcm") != "audio/pcm":
        raise ProtocolError(
            "unsupported_audio_format",
            f"{where}: only audio/pcm (PCM16 little-endian mono) is supported",
            event.event_id,
            where,
        )
    rate = fmt.get("rate", 24_000)
    if not _is_int(rate) or rate not in allowed:
        raise ProtocolError(
            "unsupported_sample_rate",
            f"{where}: sample rate {_shown(rate)} is not supported; use one of {list(allowed)}",
            event.event_id,
            where,
        )
    return int(rate)


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
    )


def initial_options(settings: Settings, session: dict[str, Any] | None) -> SessionOptions:
    """A new session's options: the defaults, then the configuration a client secret was minted with
    (`session` in `POST /v1/realtime/client_secrets`, validated like a session.update)."""
    options = default_options(settings)
    if not session:
        return options
    if session.get("type", "realtime") != "realtime":
        raise ProtocolError(
            "invalid_session",
            "only realtime sessions are supported (session.type 'realtime')",
            None,
            "session.type",
        )
    update = ClientEvent("session.update", None, {"session": session})
    return apply_session_update(options, update, ProtocolLimits.from_settings(settings))


def apply_session_update(
    options: SessionOptions, event: ClientEvent, limits: ProtocolLimits
) -> SessionOptions:
    """Validate a session.update and return the new options (all-or-nothing)."""
    session = event.body.get("session")
    if not isinstance(session, dict):
        raise ProtocolError(
            "invalid_session", "session.update needs a 'session' object", event.event_id, "session"
        )
    changes: dict[str, Any] = {}
    if "instructions" in session:
        instructions = session["instructions"]
        if not isinstance(instructions, str):
            raise ProtocolError(
                "invalid_session", "instructions must be a string", event.event_id, "session.instructions"
            )
        if len(instructions) > limits.max_text_chars:
            raise ProtocolError(
                "text_too_long",
                f"instructions have {len(instructions)} characters; the limit is {limits.max_text_chars}",
                event.event_id,
                "session.instructions",
            )
        changes["instructions"] = instructions
    if "max_output_tokens" in session:
        tokens = session["max_output_tokens"]
        if tokens == "inf":
            tokens = 4096
        if not _is_int(tokens) or not 1 <= tokens <= 4096:
            raise ProtocolError(
                "invalid_session",
                f"max_output_tokens must be an integer 1..4096 or 'inf', not {_shown(tokens)}",
                event.event_id,
                "session.max_output_tokens",
            )
        changes["max_tokens"] = tokens
    if "output_modalities" in session:
        modalities = session["output_modalities"]
        if modalities not in (["audio"], ["text"]):
            raise ProtocolError(
                "invalid_session",
                "output_modalities must be ['audio'] or ['text']",
                event.event_id,
                "session.output_modalities",
            )
        changes["output_audio"] = modalities == ["audio"]
    audio = _object_or_empty(session.get("audio"), "session.audio", event)
    audio_in = _object_or_empty(audio.get("input"), "session.audio.input", event)
    audio_out = _object_or_empty(audio.get("output"), "session.audio.output", event)
    if (
        rate := _rate(audio_in.get("format"), "session.audio.input.format", SUPPORTED_INPUT_RATES, event)
    ) is not None:
        changes["input_sample_rate"] = rate
    if (
        rate := _rate(audio_out.get("format"), "session.audio.output.format", OUTPUT_RATES, event)
    ) is not None:
        changes["output_sample_rate"] = rate
    if "turn_detection" in audio_in:
        changes["turn_detection"] = _turn_detection(audio_in["turn_detection"], options, event)
    return SessionOptions(**{**options.__dict__, **changes})


def _object_or_empty(value: Any, where: str, event: ClientEvent) -> dict[str, Any]:
    """An optional object field: absent or null means no change; anything but an object is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(
            "invalid_session", f"{where} must be an object, not {_shown(value)}", event.event_id, where
        )
    return value


def _turn_detection(value: Any, options: SessionOptions, event: ClientEvent) -> VadConfig | None:
    if value is None:
        return None
    where = "session.audio.input.turn_detection"
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise ProtocolError(
            "unsupported_turn_detection",
            "turn_detection must be null or {'type': 'server_vad', ...}",
            event.event_id,
            where,
        )
    base = options.turn_detection or VadConfig()
    fields = {
        "threshold": "threshold",
        "silence_duration_ms": "silence_ms",
        "prefix_padding_ms": "prefix_padding_ms",
    }
    values: dict[str, Any] = {}
    for wire, name in fields.items():
        if value.get(wire) is None:
            continue
        v = value[wire]
        # The SDK types the durations as integers: a fraction would make session.updated invalid.
        ok = _is_number(v) and 0 < v < 1 if wire == "threshold" else _is_int(v) and 0 <= v <= 10_000
        if not ok:
            wanted = "a number between 0 and 1" if wire == "threshold" else "an integer 0..10000"
            raise ProtocolError(
                "invalid_session",
                f"turn_detection.{wire} must be {wanted}, not {_shown(v)}",
                event.event_id,
                f"{where}.{wire}",
            )
        values[name] = v
    return VadConfig(**{**base.__dict__, **values})


def session_object(session_id: str, options: SessionOptions, model: str) -> dict[str, Any]:
    vad = options.turn_detection
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "instructions": options.instructions,
        "output_modalities": ["audio"] if options.output_audio else ["text"],
        "max_output_tokens": options.max_tokens,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": options.input_sample_rate},
                "turn_detection": None
                if vad is None
                else {
                    "type": "server_vad",
                    "threshold": vad.threshold,
                    "silence_duration_ms": vad.silence_ms,
                    "prefix_padding_ms": vad.prefix_padding_ms,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": options.output_sample_rate}},
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
        case ResponseTextDelta(response_id=rid, item_id=item_id, delta=delta):
            kind = "response.output_audio_transcript.delta" if audio_output else "response.output_text.delta"
            return [
                {
                    **base,
                    "type": kind,
                    "response_id": rid,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                }
            ]
        case ResponseAudioDelta(response_id=rid, item_id=item_id, pcm16=pcm):
            return [
                {
                    **base,
                    "type": "response.output_audio.delta",
                    "response_id": rid,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": encode_base64_pcm(pcm),
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
                        "output": [item],
                        "output_modalities": ["audio"] if audio_output else ["text"],
                        "metadata": {name: f"{value:.1f}" for name, value in metrics.items()},
                    },
                }
            ]
        case SessionError(code=code, message=message, event_id=client_id, param=param):
            return [error_event(code, message, client_id, param)]
        case _:
            assert_never(event)  # a new session event needs its mapping here
