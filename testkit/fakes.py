"""Fakes with latency knobs for session tests (they sleep on the event loop, so virtual time works)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import uvicorn

from actors.audio.pcm import rms_dbfs
from actors.conversation.events import FinishedTurn
from actors.llm.base import ChatMessage, LLMDelta, LLMEngine, LLMRequest, llm_finish
from testkit.serve_cluster import free_port


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
        self.calls: list[dict[str, Any]] = []  # the other arguments of each request
        self.cancelled = 0

    def tokens(self) -> list[str]:
        words = self.reply.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        """The scripted reply word by word, cut at `max_tokens` words ("length") as a real model is."""
        self.requests.append(request["messages"])
        self.calls.append(
            {
                "max_tokens": request["max_tokens"],
                "temperature": request["temperature"],
                "user_id": request["user_id"],
                "model": request.get("model"),
            }
        )
        try:
            await asyncio.sleep(self.ttft_ms / 1000)
            tokens = self.tokens()
            for i, token in enumerate(tokens[: request["max_tokens"]]):
                if i:
                    await asyncio.sleep(1 / self.tokens_per_s)
                yield token
            yield llm_finish("length" if len(tokens) > request["max_tokens"] else "stop")
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


def tone(ms: int, rate: int = 24_000, amplitude: float = 0.3, freq: float = 300.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def silence(ms: int, rate: int = 24_000) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


def finished_turn(
    n: int,
    user: str = "alice",
    *,
    user_text: str | None = None,
    assistant_text: str | None = None,
    turn_id: str | None = None,
    interrupted: bool = False,
) -> FinishedTurn:
    """A finished turn as a session hands it to the memory sink."""
    now = time.time()
    return FinishedTurn(
        session_id="s1",
        user_id=user,
        turn_id=turn_id or f"resp_{user}_{n}",
        user_item_id=f"item_{n}",
        user_text=user_text if user_text is not None else f"question {n}",
        assistant_text=assistant_text if assistant_text is not None else f"answer {n}",
        started_at=now - 1,
        ended_at=now,
        interrupted=interrupted,
        metrics={"e2e_latency": 812.5},
    )


def user_text_event(text: str) -> str:
    """`conversation.item.create` with a typed user message, as a Realtime client sends it."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return json.dumps({"type": "conversation.item.create", "item": item})


async def realtime_text_turn(ws: Any, text: str) -> dict[str, Any]:
    """Send a typed user message and `response.create` over a raw Realtime WebSocket; return response.done."""
    await ws.send(user_text_event(text))
    await ws.send(json.dumps({"type": "response.create"}))
    async with asyncio.timeout(60):
        while (event := json.loads(await ws.recv()))["type"] != "response.done":
            assert event["type"] != "error", event
    return event["response"]


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """An ASGI app on a real socket (uvicorn, this event loop), for clients with their own HTTP stack."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no started event)
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
