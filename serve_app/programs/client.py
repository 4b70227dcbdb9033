"""Talk to a running agent over `WS /v1/realtime` with the official openai SDK.

    voice-agent-client --wav question.wav --out reply.wav
    voice-agent-client --text "What is the capital of France?"
    python -m serve_app.programs.client --url ws://host:8000/v1 --api-key KEY --wav question.wav

Prints the transcript, the reply and the per-turn latency breakdown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from openai import AsyncOpenAI

from actors.audio.pcm import resample

RATE = 24_000
CHUNK_MS = 100


def load_wav(path: Path) -> bytes:
    """Any WAV/FLAC/OGG soundfile reads, mixed to mono and resampled to 24 kHz PCM16."""
    data, rate = sf.read(io.BytesIO(path.read_bytes()), dtype="int16", always_2d=True)
    mono = data.mean(axis=1).astype("<i2").tobytes()
    return resample(mono, rate, RATE)


async def converse(args: argparse.Namespace) -> int:
    http_url = args.url.replace("ws://", "http://").replace("wss://", "https://")
    client = AsyncOpenAI(api_key=args.api_key, base_url=http_url, websocket_base_url=args.url)
    reply_audio = bytearray()
    async with client.realtime.connect(model="voice-agent", extra_query={"user": args.user}) as conn:
        await conn.recv()  # session.created
        if args.text:
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": args.text}],
                }
            )
            await conn.response.create()
        else:
            # Trailing silence lets the server's VAD see the end of the turn.
            pcm = load_wav(Path(args.wav)) + b"\x00\x00" * (RATE * 3 // 2)
            step = RATE * 2 * CHUNK_MS // 1000
            for i in range(0, len(pcm), step):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
                await asyncio.sleep(0 if args.fast else CHUNK_MS / 1000)
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                print(f"you said:  {event.transcript}")
            elif event.type == "response.output_audio.delta":
                reply_audio += base64.b64decode(event.delta)
            elif event.type == "error":
                print(f"error: {event.error.code}: {event.error.message}", file=sys.stderr)
                return 1
            elif event.type == "response.done":
                response = event.response
                parts = getattr(response.output[0], "content", None) if response.output else None
                content = parts[0] if parts else None
                text = getattr(content, "transcript", None) or getattr(content, "text", "") or ""
                print(f"agent said: {text}")
                print(f"status: {response.status}, {len(reply_audio) / (RATE * 2):.2f} s of audio")
                for name, value in (response.metadata or {}).items():
                    print(f"  {name:<20} {value:>9} ms")
                break
    if args.out and reply_audio:
        sf.write(args.out, np.frombuffer(bytes(reply_audio), dtype="<i2"), RATE, subtype="PCM_16")
        print(f"reply saved to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1", help="the agent's /v1 WebSocket base URL")
    parser.add_argument("--api-key", default="local", help="bearer key (when the agent has VOICE_API_KEYS)")
    parser.add_argument("--user", default="anonymous", help="user id (selects the user's memory)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="speech to send (any sample rate; streamed in real time)")
    source.add_argument("--text", help="type a message instead of speaking")
    parser.add_argument("--out", help="save the spoken reply as a 24 kHz WAV")
    parser.add_argument("--fast", action="store_true", help="send the WAV at once instead of in real time")
    return asyncio.run(converse(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
