"""The TTS stage: engine PCM → the session's output rate, first chunk at once, later ones coalesced.
Runs in process, or in `serve_app.deployments.TTSDeployment` behind
`serve_app.stage_clients.RemoteTTSStage`.

The first chunk goes out as soon as it exists (it sets tts_ttfb); later chunks are merged to at least
`coalesce_ms` so a Serve hop costs ~0.6 ms per 100+ ms of audio instead of per 20 ms buffer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from actors.audio.pcm import PCM_SAMPLE_WIDTH, StreamResampler
from actors.load_meter import LoadMeter
from actors.tts.base import DEFAULT_STYLE, SpeechStyle, TTSEngine


class TTSStage:
    """The TTS stage around one engine (a `TTSClient`)."""

    def __init__(self, engine: TTSEngine, coalesce_ms: int = 120) -> None:
        self.engine = engine
        self.coalesce_ms = coalesce_ms
        # Phrases being synthesised, over time: this stage's autoscaling signal.
        self.load = LoadMeter()

    async def synthesize(
        self, text: str, sample_rate: int, style: SpeechStyle = DEFAULT_STYLE
    ) -> AsyncGenerator[bytes, None]:
        """`text` spoken in `style` as PCM16 mono at `sample_rate`: the first chunk at once, then
        ≥ `coalesce_ms` each."""
        resampler = StreamResampler(self.engine.sample_rate, sample_rate)
        min_bytes = sample_rate * PCM_SAMPLE_WIDTH * self.coalesce_ms // 1000
        pending = bytearray()
        sent_any = False
        chunks = self.engine.synthesize(text, style)
        self.load.begin()
        try:
            async for chunk in chunks:
                pending += resampler.process(chunk)
                if pending and (not sent_any or len(pending) >= min_bytes):
                    sent_any = True
                    yield bytes(pending)
                    pending.clear()
            pending += resampler.process(b"", last=True)
            if pending:
                yield bytes(pending)
        finally:
            self.load.end()
            await chunks.aclose()
