"""Offline TTS with eSpeak NG: formant synthesis, ~700x real time, first chunk in well under 1 ms."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable

from actors.audio.tempo import TempoStretch
from actors.thread_stream import stream_from_thread
from actors.tts.base import DEFAULT_STYLE, SpeechStyle, TTSEngine
from actors.tts.espeak_lib import get_espeak
from actors.tts.voices import espeak_voice

# eSpeak NG's speaking rates: below 80 words a minute it speaks at 80 (slower speeds are stretched
# afterwards); its built-in speed-up (sonic) reaches 4x the default rate.
MIN_RATE_WPM = 80


class EspeakEngine(TTSEngine):
    name = "espeak"
    model = "espeak-ng"

    def __init__(self, voice: str = "en-us", rate_wpm: int = 175) -> None:
        self.voice = voice
        self.rate_wpm = rate_wpm
        # Initialising here (a few ms, once per process) gives the true rate: 22050 Hz.
        self.sample_rate = get_espeak().sample_rate

    async def warmup(self) -> None:
        # Load the voice (first use reads its data files) with a tiny synthesis.
        await asyncio.to_thread(get_espeak().synth, ".", self.voice, self.rate_wpm, lambda _chunk: False)

    async def synthesize(self, text: str, style: SpeechStyle = DEFAULT_STYLE) -> AsyncGenerator[bytes, None]:
        if not text.strip():
            return
        voice = espeak_voice(style.voice or self.voice)
        rate = round(self.rate_wpm * style.speed)
        # What eSpeak cannot slow down itself, the stretch does (pitch kept).
        stretch = TempoStretch(self.sample_rate, rate / MIN_RATE_WPM) if rate < MIN_RATE_WPM else None

        def produce(emit: Callable[[bytes], None], stop: threading.Event) -> None:
            def sink(chunk: bytes) -> bool:
                # Runs inside espeak's callback: returning True aborts the synthesis (barge-in).
                if stop.is_set():
                    return True
                emit(chunk if stretch is None else stretch.process(chunk))
                return False

            get_espeak().synth(text, voice, max(rate, MIN_RATE_WPM), sink)
            if stretch is not None and not stop.is_set():
                emit(stretch.process(b"", last=True))

        # Joined on close: the worker must notice the abort (at its next chunk) before the global
        # lock is reused.
        async for chunk in stream_from_thread(produce, name="espeak-synth", join_on_close=True):
            if chunk:
                yield chunk
