"""Fakes with latency knobs for session tests (they sleep on the event loop, so virtual time works)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from actors.audio import rms_dbfs
from actors.llm.base import ChatMessage, LLMEngine


class EnergySpeechDetector:
    """Deterministic VAD for tests: a frame is speech when louder than -35 dBFS."""

    frame_samples = 512

    def probability(self, frame: bytes) -> float:
        return 1.0 if rms_dbfs(frame) > -35.0 else 0.0

    def reset(self) -> None:
        pass


class FakeLLMEngine(LLMEngine):
    name = "fake"
    model = "scripted"

    def __init__(self, reply: str, ttft_ms: float = 300.0, tokens_per_s: float = 50.0) -> None:
        self.reply = reply
        self.ttft_ms = ttft_ms
        self.tokens_per_s = tokens_per_s
        self.requests: list[list[ChatMessage]] = []
        self.cancelled = 0

    def tokens(self) -> list[str]:
        words = self.reply.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    async def stream(
        self, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.requests.append(messages)
        try:
            await asyncio.sleep(self.ttft_ms / 1000)
            for i, token in enumerate(self.tokens()):
                if i:
                    await asyncio.sleep(1 / self.tokens_per_s)
                yield token
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


def tone(ms: int, rate: int = 24_000, amplitude: float = 0.3, freq: float = 300.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def silence(ms: int, rate: int = 24_000) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)
