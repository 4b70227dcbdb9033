"""The official SDK's realtime client driving a running agent: connect, stream audio, collect a turn."""

from __future__ import annotations

import asyncio
import base64

from openai import AsyncOpenAI

from testkit.serve_cluster import ServeRun

RATE = 24_000


def client_for(agent: ServeRun) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key="unused-locally", base_url=f"{agent.base_url}/v1", websocket_base_url=agent.ws_url
    )


async def stream_audio(conn, pcm: bytes, chunk_ms: int = 100, speed: float = 1.0) -> None:
    """Send audio like a microphone: `chunk_ms` pieces at real time (or `speed` times faster)."""
    step = RATE * 2 * chunk_ms // 1000
    for i in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
        await asyncio.sleep(chunk_ms / 1000 / speed)


class Turn:
    def __init__(self) -> None:
        self.events: list = []
        self.audio = bytearray()
        self.transcript = ""
        self.reply = ""

    @property
    def done(self):
        return next(e for e in self.events if e.type == "response.done")


async def collect_turn(conn, limit_s: float = 60.0) -> Turn:
    turn = Turn()
    async with asyncio.timeout(limit_s):
        async for event in conn:
            turn.events.append(event)
            if event.type == "response.output_audio.delta":
                turn.audio += base64.b64decode(event.delta)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                turn.transcript = event.transcript
            elif event.type == "response.output_audio_transcript.delta":
                turn.reply += event.delta
            elif event.type == "error":
                raise AssertionError(f"error event: {event.error}")
            elif event.type == "response.done":
                return turn
    raise AssertionError("connection closed before response.done")
