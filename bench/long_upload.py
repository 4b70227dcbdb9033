"""What a long `/v1/audio/transcriptions` upload does to everyone else's uploads.

    .venv/bin/python -m bench.long_upload             # ~1 min on 2 cores → bench/results/long_upload.md

The router's REST app in one process with the offline STT stage (pocketsphinx; no Ray, so the figures
are this process's CPU and GIL shared by everything, as on one STT replica), driven over ASGI. A short
upload (a 3 s LibriVox recording) is timed alone, then back to back while `--long-count` long uploads
(LibriVox recordings repeated to `--long-s` seconds) are being transcribed; and one long upload is
abandoned by its client after 2 s, to see how long STT keeps decoding it after the client left.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from actors.config import Settings
from actors.llm.stage import LLMStage
from actors.stt.base import STTStream
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from actors.stt.stage import STTStage
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import FakeLLMEngine
from testkit.recordings import librivox, silence
from testkit.serve_cluster import ROOT

RATE = 16_000
CLIPS = ("0870", "0880", "0890", "0920", "0930")


def wav(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def long_recording(seconds: float) -> bytes:
    one = b"".join(librivox(c, RATE)[0] + silence(300, RATE) for c in CLIPS)
    size = int(seconds * RATE) * 2
    return (one * (size // len(one) + 1))[:size]


class BusyEngine(PocketsphinxEngine):
    """Pocketsphinx that records when each stream was last busy decoding (for the abandoned upload)."""

    decoding = 0  # decode calls in progress (in worker threads)
    last_busy = 0.0  # when the last one ended

    def open_stream(self) -> STTStream:
        stream = super().open_stream()
        process = stream._process

        def timed(pcm: bytes) -> str:
            BusyEngine.decoding += 1
            try:
                return process(pcm)
            finally:
                BusyEngine.decoding -= 1
                BusyEngine.last_busy = time.perf_counter()

        stream._process = timed  # type: ignore[method-assign]
        return stream


async def upload(http: httpx.AsyncClient, audio: bytes) -> float:
    started = time.perf_counter()
    answer = await http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "whisper-1"},
        timeout=900,
    )
    answer.raise_for_status()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-s", type=float, default=120.0)
    parser.add_argument("--long-count", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long_upload.md")
    args = parser.parse_args()

    settings = Settings(stt_engine="pocketsphinx", llm_engine="openai", tts_engine="simulated").resolved()
    engine = BusyEngine()
    await engine.warmup()
    app = build_router_app(
        RouterDeps(
            settings=settings,
            stt=STTStage(engine),
            llm=LLMStage(FakeLLMEngine("Hi.")),
            tts=TTSStage(SimulatedTTSEngine()),
        )
    )
    short = wav(librivox("0880", RATE)[0])
    long = wav(long_recording(args.long_s))
    rows: list[tuple[str, str]] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
        alone = [await upload(http, short) for _ in range(4)][1:]
        rows.append(("short upload alone (median)", f"{statistics.median(alone):.2f} s"))

        longs = [asyncio.create_task(upload(http, long)) for _ in range(args.long_count)]
        await asyncio.sleep(1.0)
        during = []
        while not all(t.done() for t in longs) and len(during) < 8:
            during.append(await upload(http, short))
        long_took = await asyncio.gather(*longs)
        rows.append(
            (
                f"short upload while {args.long_count} × {args.long_s:.0f} s uploads run (median, max)",
                f"{statistics.median(during):.2f} s, {max(during):.2f} s ({len(during)} uploads)",
            )
        )
        rows.append((f"each {args.long_s:.0f} s upload took", ", ".join(f"{t:.1f} s" for t in long_took)))

        abandoned = asyncio.create_task(upload(http, long))
        await asyncio.sleep(2.0)
        abandoned.cancel()  # over ASGI in process, the client leaving cancels the request's handler
        left_at = time.perf_counter()
        await asyncio.sleep(0.5)
        while BusyEngine.decoding:  # noqa: ASYNC110 - counted by the decoding threads
            await asyncio.sleep(0.1)
        rows.append(
            (
                f"STT kept decoding an abandoned {args.long_s:.0f} s upload for",
                f"{max(BusyEngine.last_busy - left_at, 0.0):.1f} s after its client left",
            )
        )
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    args.out.write_text(
        "# Long uploads and everyone else's\n\n`.venv/bin/python -m bench.long_upload "
        f"--long-s {args.long_s:g} --long-count {args.long_count}`\n\n{table}"
    )


if __name__ == "__main__":
    asyncio.run(main())
