"""Offline TTS with eSpeak NG: formant synthesis, ~700x real time, first chunk in well under 1 ms."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable

from actors.thread_stream import stream_from_thread
from actors.tts.base import TTSEngine
from actors.tts.espeak_lib import get_espeak


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

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        if not text.strip():
            return

        def produce(emit: Callable[[bytes], None], stop: threading.Event) -> None:
            def sink(chunk: bytes) -> bool:
                # Runs inside espeak's callback: returning True aborts the synthesis (barge-in).
                if stop.is_set():
                    return True
                emit(chunk)
                return False

            get_espeak().synth(text, self.voice, self.rate_wpm, sink)

        # Joined on close: the worker must notice the abort (at its next chunk) before the global
        # lock is reused.
        async for chunk in stream_from_thread(produce, name="espeak-synth", join_on_close=True):
            yield chunk
