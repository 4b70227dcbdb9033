"""A latency-faithful stand-in TTS for tests and benchmarks (never chosen automatically).

After `ttfb_ms` it produces a tone whose length follows the text (`ms_per_char`), in 20 ms chunks
generated `realtime_factor` times faster than real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np

from actors.audio.pcm import float_to_pcm
from actors.tts.base import DEFAULT_STYLE, SpeechStyle, TTSEngine

_CHUNK_MS = 20


class SimulatedTTSEngine(TTSEngine):
    name = "simulated"
    voice = "tone"

    def __init__(
        self,
        ttfb_ms: float = 100.0,
        ms_per_char: float = 60.0,
        realtime_factor: float = 20.0,
        sample_rate: int = 24_000,
    ) -> None:
        self.model = f"tone, first byte after {ttfb_ms:g} ms"
        self.ttfb_ms = ttfb_ms
        self.ms_per_char = ms_per_char
        self.realtime_factor = realtime_factor
        self.sample_rate = sample_rate

    async def synthesize(self, text: str, style: SpeechStyle = DEFAULT_STYLE) -> AsyncGenerator[bytes, None]:
        await asyncio.sleep(self.ttfb_ms / 1000)
        chunks = max(1, round(len(text) * self.ms_per_char / _CHUNK_MS / style.speed))
        n = self.sample_rate * _CHUNK_MS // 1000
        t = np.arange(n) / self.sample_rate
        for i in range(chunks):
            # A 220 Hz tone with a little amplitude movement: non-silent, clearly not speech.
            yield float_to_pcm(0.3 * np.sin(2 * np.pi * 220 * (t + i * n / self.sample_rate)))
            if i + 1 < chunks:
                await asyncio.sleep(_CHUNK_MS / 1000 / self.realtime_factor)
