"""A latency-faithful stand-in STT for tests and benchmarks (never chosen automatically).

It does not recognise speech: it returns a configured transcript, word by word as interim results in
proportion to the audio received (unless made without them, as a provider that transcribes a finished
file is), and the final one `finalize_delay_ms` after the end of audio.
"""

from __future__ import annotations

import asyncio

from actors.audio.pcm import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE
from actors.stt.base import STTEngine, STTStream


class SimulatedSTTStream(STTStream):
    def __init__(self, engine: SimulatedSTTEngine) -> None:
        self._engine = engine
        self._seconds = 0.0
        self._words_shown = 0

    async def feed(self, pcm16: bytes) -> str | None:
        self._seconds += len(pcm16) / (PCM_SAMPLE_WIDTH * STT_SAMPLE_RATE)
        if not self._engine.interim_results:
            return None
        words = self._engine.transcript.split()
        shown = min(len(words), int(self._seconds / self._engine.seconds_per_word))
        if shown == self._words_shown:
            return None
        self._words_shown = shown
        return " ".join(words[:shown])

    async def finish(self) -> str:
        await asyncio.sleep(self._engine.finalize_delay_ms / 1000)
        return self._engine.transcript


class SimulatedSTTEngine(STTEngine):
    name = "simulated"

    def __init__(
        self,
        transcript: str,
        finalize_delay_ms: float = 150.0,
        seconds_per_word: float = 0.3,
        interim_results: bool = True,
    ):
        self.model = f"fixed transcript, final after {finalize_delay_ms:g} ms"
        self.transcript = transcript
        self.finalize_delay_ms = finalize_delay_ms
        self.seconds_per_word = seconds_per_word
        self.interim_results = interim_results

    def open_stream(self) -> STTStream:
        return SimulatedSTTStream(self)
