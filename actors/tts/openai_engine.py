"""TTS through OpenAI's speech endpoint, streamed as raw 24 kHz PCM16 while it is generated."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

from openai import AsyncOpenAI, Timeout

from actors.audio.pcm import PCM_SAMPLE_WIDTH
from actors.probe import CachedProbe, openai_server_problem
from actors.tts.base import DEFAULT_STYLE, SpeechStyle, TTSEngine


class OpenAITTSEngine(TTSEngine):
    name = "openai"
    sample_rate = 24_000  # response_format="pcm" is always 24 kHz mono PCM16 little-endian

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        connect_timeout_s: float = 3.0,
        timeout_s: float = 5.0,
        probe_ttl_s: float = 5.0,
    ) -> None:
        self.model = model
        self.voice = voice
        if api_key is None and base_url is not None:
            api_key = "unused"  # local compatible servers need no key; the client wants one
        # Seconds, not the SDK's 10 minutes: the read timeout bounds the first byte and every gap
        # after it. One SDK retry, which happens only before any audio has arrived.
        timeout = Timeout(timeout_s, connect=connect_timeout_s)
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=1)
        check = partial(openai_server_problem, self._client, "text-to-speech", connect_timeout_s)
        self._probe = CachedProbe(check, ttl_s=probe_ttl_s)

    async def probe(self) -> str | None:
        return await self._probe.check()

    async def synthesize(self, text: str, style: SpeechStyle = DEFAULT_STYLE) -> AsyncGenerator[bytes, None]:
        if not text.strip():
            return
        # OpenAI's own voice names, speed and instructions mean what they say there.
        extra: dict[str, Any] = {}
        if style.speed != 1.0:
            extra["speed"] = style.speed
        if style.instructions:
            extra["instructions"] = style.instructions
        # The streaming response is an HTTP body read as it arrives; leaving the `async with`
        # (also when the consumer closes us early) closes the connection and stops the transfer.
        async with self._client.audio.speech.with_streaming_response.create(
            model=self.model, voice=style.voice or self.voice, input=text, response_format="pcm", **extra
        ) as response:
            carry = b""
            async for chunk in response.iter_bytes():
                # HTTP chunk boundaries ignore samples: hold an odd trailing byte for the next chunk.
                data = carry + chunk
                cut = len(data) - len(data) % PCM_SAMPLE_WIDTH
                carry = data[cut:]
                if cut:
                    yield data[:cut]
