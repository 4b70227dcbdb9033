"""STT through OpenAI's transcription endpoint (gpt-4o-mini-transcribe, gpt-4o-transcribe, whisper-1)."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import soundfile as sf
from openai import AsyncOpenAI, Timeout

from actors.audio.pcm import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE
from actors.probe import CachedProbe, openai_server_problem
from actors.stt.base import STTEngine, STTStream

# The endpoint rejects audio shorter than 0.1 s; such an utterance is noise, not words.
_MIN_AUDIO_BYTES = STT_SAMPLE_RATE * PCM_SAMPLE_WIDTH // 10


def pcm16_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class OpenAISTTStream(STTStream):
    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self._client = client
        self._model = model
        self._audio = bytearray()

    async def feed(self, pcm16: bytes) -> str | None:
        # No interim results: the transcriptions endpoint takes a finished file. Partial text
        # would need the Realtime transcription websocket, which a separate engine could use.
        self._audio += pcm16
        return None

    async def finish(self) -> str:
        audio = bytes(self._audio[: len(self._audio) - len(self._audio) % PCM_SAMPLE_WIDTH])
        self._audio.clear()
        if len(audio) < _MIN_AUDIO_BYTES:
            return ""
        result = await self._client.audio.transcriptions.create(
            model=self._model,
            file=("utterance.wav", pcm16_to_wav(audio, STT_SAMPLE_RATE), "audio/wav"),
        )
        return result.text.strip()

    async def aclose(self) -> None:
        self._audio.clear()


class OpenAISTTEngine(STTEngine):
    name = "openai"
    interim_results = False  # the transcriptions endpoint takes a finished file

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini-transcribe",
        connect_timeout_s: float = 3.0,
        timeout_s: float = 10.0,
        probe_ttl_s: float = 5.0,
    ) -> None:
        self.model = model
        if api_key is None and base_url is not None:
            api_key = "unused"  # local compatible servers need no key; the client wants one
        # Seconds, not the SDK's 10 minutes: a turn must fail while the user still waits for it.
        # One SDK retry: the upload is whole and nothing has been shown, so repeating it is safe.
        timeout = Timeout(timeout_s, connect=connect_timeout_s)
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=1)
        check = partial(openai_server_problem, self._client, "speech-to-text", connect_timeout_s)
        self._probe = CachedProbe(check, ttl_s=probe_ttl_s)

    def open_stream(self) -> OpenAISTTStream:
        return OpenAISTTStream(self._client, self.model)

    async def probe(self) -> str | None:
        return await self._probe.check()
