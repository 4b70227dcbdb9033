"""The slice of the OpenAI Realtime protocol that the benchmark's clients speak, and the per-turn timing
that both peer servers report in `response.done`. Standard library only: the peer servers (run as scripts
in their own environments) import it as a sibling module.

Client → server: `input_audio_buffer.append` (base64 PCM16 mono 24 kHz); everything else is ignored.
Server → client: `session.created` on connect, `response.output_audio.delta` per reply audio chunk,
`response.done` per reply (status "completed" or "cancelled", metadata: strings in ms).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CLIENT_RATE = 24_000  # PCM16 mono, both ways
VAD_SILENCE_S = 0.5  # the benchmark's silence window, the same for every agent
TRANSCRIPT = "What is the weather like tomorrow?"  # what the simulated STT always hears
SYSTEM_PROMPT = "You are a helpful voice assistant. Answer in one short sentence."
STT_DELAY_S = 0.150  # simulated STT: final transcript this long after the end of the utterance's audio
TTS_TTFB_S = 0.100  # simulated TTS: first audio this long after a phrase arrives
TTS_MS_PER_CHAR = 60.0  # ... then a tone this long per character
TTS_REALTIME_FACTOR = 20.0  # ... in 20 ms chunks made this many times faster than real time


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def dumps(event: dict[str, Any]) -> str:
    # "type" first (the dicts below are built that way): clients may match it in the first bytes.
    return json.dumps(event, separators=(",", ":"))


def session_created(model: str) -> str:
    audio = {"format": {"type": "audio/pcm", "rate": CLIENT_RATE}}
    session = {
        "id": _id("sess"),
        "object": "realtime.session",
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "audio": {"input": audio, "output": audio},
    }
    return dumps({"type": "session.created", "event_id": _id("event"), "session": session})


def appended_audio(message: str | bytes) -> bytes | None:
    """The PCM16 of an `input_audio_buffer.append` event; None for anything else."""
    try:
        event = json.loads(message)
        if event.get("type") == "input_audio_buffer.append":
            return base64.b64decode(event["audio"])
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def tone_chunks(text: str, sample_rate: int) -> list[bytes]:
    """The simulated TTS's audio for `text`: a 220 Hz tone, 60 ms per character, in 20 ms PCM16 chunks."""
    n = sample_rate * 20 // 1000
    t = np.arange(n) / sample_rate
    chunks = max(1, round(len(text) * TTS_MS_PER_CHAR / 20))
    return [
        (0.3 * np.sin(2 * np.pi * 220 * (t + i * n / sample_rate)) * 32767).astype("<i2").tobytes()
        for i in range(chunks)
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Turn:
    """One user turn as the framework saw it (time.time() readings) and the metrics it reported."""

    speech_end: float | None = None  # acoustic end of speech, as the framework's VAD dates it
    vad_stop: float | None = None  # when the VAD decided the speech had ended
    marks: dict[str, float] = field(default_factory=dict)  # other moments, reported relative to speech_end
    metrics: dict[str, float] = field(default_factory=dict)  # durations in seconds, reported as they are


@dataclass
class Reply:
    response_id: str
    item_id: str
    first_audio: float  # when the first audio chunk was handed to the websocket
    turn: Turn


class Conversation:
    """Per connection: the user turn being collected and the reply in progress, if any.

    A reply starts with its first audio chunk and takes the pending turn with it; metrics reported while it
    is in progress belong to it. `finish()` builds its `response.done`.
    """

    def __init__(self) -> None:
        self.turn = Turn()
        self.reply: Reply | None = None

    def vad_stopped(self, speech_end: float, vad_stop: float) -> None:
        # The latest end of speech wins: a pause the VAD took for an end is followed by more speech.
        self.turn.speech_end, self.turn.vad_stop = speech_end, vad_stop

    def mark(self, name: str, at: float) -> None:
        self.turn.marks[name] = at

    def metric(self, name: str, seconds: float) -> None:
        turn = self.reply.turn if self.reply is not None else self.turn
        turn.metrics.setdefault(name, seconds)  # the first of a turn: the one on the critical path

    def audio_delta(self, pcm16: bytes) -> str:
        if self.reply is None:
            self.reply = Reply(_id("resp"), _id("item"), time.time(), self.turn)
            self.turn = Turn()
        event = {
            "type": "response.output_audio.delta",
            "response_id": self.reply.response_id,
            "item_id": self.reply.item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(pcm16).decode(),
            "event_id": _id("event"),
        }
        return dumps(event)

    def finish(self, status: str) -> str | None:
        """`response.done` for the reply in progress ("completed" or "cancelled"); None if there is none."""
        reply, self.reply = self.reply, None
        if reply is None:
            return None
        turn = reply.turn
        metadata = {name: _ms(value) for name, value in turn.metrics.items()}
        if turn.speech_end is not None and turn.vad_stop is not None:
            metadata["end_of_turn_delay"] = _ms(turn.vad_stop - turn.speech_end)
            metadata["e2e_latency"] = _ms(reply.first_audio - turn.speech_end)
            for name, at in turn.marks.items():
                metadata[name] = _ms(at - turn.speech_end)
        response = {
            "id": reply.response_id,
            "object": "realtime.response",
            "status": status,
            "status_details": {"type": status},
            "output": [],
            "metadata": metadata,
        }
        return dumps({"type": "response.done", "event_id": _id("event"), "response": response})


async def exit_with_parent(parent_pid: int, stop: Callable[[], None]) -> None:
    """Call `stop` once the process that started us is gone (we run in a session of our own)."""
    if parent_pid <= 0:
        return
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - nothing to await: a parent's death has no event
        await asyncio.sleep(1.0)
    stop()
