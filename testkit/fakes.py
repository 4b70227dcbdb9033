"""Fakes with latency knobs for session tests (they sleep on the event loop, so virtual time works)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ScriptedRound:
    """What a scripted model says in one round of a turn: words, then the calls it makes (tool name and
    JSON arguments); no calls: the round answers."""

    text: str = ""
    calls: tuple[tuple[str, str], ...] = ()


def _words(text: str) -> list[str]:
    words = text.split(" ") if text else []
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _rounds_done(messages: Sequence[ChatMessage]) -> int:
    """How many rounds of calls this turn has had: assistant messages with calls since the last user
    message."""
    done = 0
    for message in reversed(messages):
        if message["role"] == "user":
            break
        done += bool(message["role"] == "assistant" and message.get("tool_calls"))
    return done


class FakeLLMEngine(LLMEngine):
    name = "fake"
    model = "scripted"

    def __init__(
        self,
        reply: str,
        ttft_ms: float = 300.0,
        tokens_per_s: float = 50.0,
        rounds: Sequence[ScriptedRound] = (),
    ) -> None:
        self.reply = reply
        self.ttft_ms = ttft_ms
        self.tokens_per_s = tokens_per_s
        # With rounds: round n of a turn (n rounds of calls already in the prompt) says `rounds[n]`
        # (the last one once past the end), streamed as OpenAI streams it: words, then each call's
        # pieces (the first with its id and name, then its arguments in fragments), then "tool_calls".
        self.rounds = list(rounds)
        self.requests: list[list[ChatMessage]] = []
        self.calls: list[dict[str, Any]] = []  # the other arguments of each request
        self.cancelled = 0

    def tokens(self) -> list[str]:
        return _words(self.reply)

    def _round(self, request: LLMRequest) -> ScriptedRound:
        if not self.rounds:
            return ScriptedRound(self.reply)
        scripted = self.rounds[min(_rounds_done(request["messages"]), len(self.rounds) - 1)]
        offered = {tool["function"]["name"] for tool in request.get("tools", [])}
        if request.get("tool_choice") == "none" or not offered:
            return ScriptedRound(scripted.text)  # a model told not to call tools answers in words
        return scripted

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        """The scripted reply word by word, cut at `max_tokens` words ("length") as a real model is."""
        self.requests.append(request["messages"])
        self.calls.append(
            {
                "max_tokens": request["max_tokens"],
                "temperature": request["temperature"],
                "user_id": request["user_id"],
                "model": request.get("model"),
                # Only when offered, so a request without tools reads as it always did.
                **{key: request[key] for key in ("tools", "tool_choice") if key in request},
            }
        )
        scripted = self._round(request)
        try:
            await asyncio.sleep(self.ttft_ms / 1000)
            tokens = _words(scripted.text)
            for i, token in enumerate(tokens[: request["max_tokens"]]):
                if i:
                    await asyncio.sleep(1 / self.tokens_per_s)
                yield token
            if len(tokens) > request["max_tokens"]:
                yield llm_finish("length")
                return
            for index, (name, arguments) in enumerate(scripted.calls):
                await asyncio.sleep(1 / self.tokens_per_s)
                yield {
                    "type": "tool_call",
                    "index": index,
                    "id": f"call_{index}_{len(self.requests)}",
                    "name": name,
                    "arguments": "",
                }
                third = max(len(arguments) // 3, 1)
                for start in range(0, len(arguments), third):
                    await asyncio.sleep(1 / self.tokens_per_s)
                    yield {"type": "tool_call", "index": index, "arguments": arguments[start : start + third]}
            yield llm_finish("tool_calls" if scripted.calls else "stop")
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
