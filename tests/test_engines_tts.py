"""TTS engines: eSpeak NG streaming, barge-in and locking; OpenAI against a local fake server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator

import numpy as np
import pytest

from actors.audio.pcm import duration_ms, rms_dbfs
from actors.config import Settings
from actors.engines import create_tts_engine
from actors.tts.base import SpeechStyle
from actors.tts.espeak_engine import EspeakEngine
from actors.tts.openai_engine import OpenAITTSEngine
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

LONG_TEXT = " ".join(
    [
        "This is a fairly long paragraph for the speech synthesizer.",
        "It should take many seconds to speak, but only milliseconds to produce,",
        "and the first chunk of audio must arrive long before the last one is ready.",
    ]
    * 4
)


async def _collect(engine: EspeakEngine, text: str) -> bytes:
    return b"".join([chunk async for chunk in engine.synthesize(text)])


def _same_speech(a: bytes, b: bytes) -> bool:
    """eSpeak is slightly random (lengths vary by up to ~1 %, samples by a few LSB): compare loosely.

    Nearly the same length and the same loudness envelope (20 ms frames) over the first 2 s
    (later, the timing jitter adds up and shifts the envelopes) catch what matters: chunks of
    another synthesis mixed in, audio left over from an aborted one, or an utterance cut short.
    """
    # Up to 2 % or 50 ms apart (measured: ±1 % on a 1.4 s phrase); mixed-in or leftover audio is
    # hundreds of ms.
    if abs(len(a) - len(b)) > max(0.02 * max(len(a), len(b)), 2 * 22_050 * 0.05):
        return False
    frame = 441  # 20 ms at 22.05 kHz
    n = min(len(a) // 2, len(b) // 2, 2 * 22_050) // frame * frame
    env_a, env_b = (
        np.sqrt(np.mean(np.frombuffer(x, "<i2")[:n].astype(np.float64).reshape(-1, frame) ** 2, axis=1))
        for x in (a, b)
    )
    return bool(np.corrcoef(env_a, env_b)[0, 1] > 0.95)


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine()


async def test_espeak_streams_first_chunk_early(espeak: EspeakEngine) -> None:
    await espeak.warmup()
    assert espeak.sample_rate == 22_050
    started = time.perf_counter()
    first_at = None
    chunks = []
    async for chunk in espeak.synthesize(LONG_TEXT):
        if first_at is None:
            first_at = time.perf_counter() - started
        chunks.append(chunk)
    total = time.perf_counter() - started
    assert first_at is not None
    pcm = b"".join(chunks)
    audio_s = duration_ms(pcm, espeak.sample_rate) / 1000
    print(
        f"espeak: first chunk {first_at * 1000:.2f} ms, all {total * 1000:.1f} ms, "
        f"{len(chunks)} chunks, {audio_s:.1f} s audio ({audio_s / total:.0f}x real time)"
    )
    assert len(chunks) > 10
    assert all(len(c) % 2 == 0 for c in chunks)
    # Streaming, not buffering: the first chunk comes within a small fraction of the total.
    assert first_at < total / 5


async def test_espeak_audio_is_plausible(espeak: EspeakEngine) -> None:
    text = "The quick brown fox jumps over the lazy dog."  # 9 words
    pcm = await _collect(espeak, text)
    seconds = duration_ms(pcm, espeak.sample_rate) / 1000
    # 175 words/min ≈ 3 words/s: ~3 s of speech.
    assert 1.5 < seconds < 6.0, seconds
    assert rms_dbfs(pcm) > -35.0
    # The same text twice gives the same speech (no state leaks between calls).
    assert _same_speech(await _collect(espeak, text), pcm)
    assert not _same_speech(await _collect(espeak, "Something else entirely, and longer too."), pcm)


async def test_espeak_rate_changes_duration() -> None:
    text = "Speaking rate is measured in words per minute."
    slow = await _collect(EspeakEngine(rate_wpm=120), text)
    fast = await _collect(EspeakEngine(rate_wpm=300), text)
    assert len(fast) < 0.7 * len(slow)


async def test_espeak_close_early_stops_synthesis(espeak: EspeakEngine) -> None:
    full = await _collect(espeak, LONG_TEXT)
    stream = espeak.synthesize(LONG_TEXT)
    got = [await anext(stream), await anext(stream)]
    started = time.perf_counter()
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()  # barge-in
    closed_in = time.perf_counter() - started
    assert closed_in < 0.5
    assert sum(map(len, got)) < len(full)
    # The aborted synthesis leaves nothing behind: the next one is complete and identical.
    assert _same_speech(await _collect(espeak, LONG_TEXT), full)


async def test_espeak_concurrent_synthesis_does_not_mix(espeak: EspeakEngine) -> None:
    a_text, b_text = "One two three four five.", "Completely different words here, and more of them."
    a_alone, b_alone = await _collect(espeak, a_text), await _collect(espeak, b_text)
    results = await asyncio.gather(*[_collect(espeak, t) for t in (a_text, b_text, a_text, b_text)])
    for got, alone in zip(results, [a_alone, b_alone, a_alone, b_alone], strict=True):
        assert _same_speech(got, alone)


async def test_espeak_settings_are_per_engine() -> None:
    # The library has one global voice and rate; each synthesis must apply its own engine's.
    # (250, not 300 words/min: above ~270 eSpeak's fast mode varies too much for _same_speech.)
    text = "Settings belong to each engine, not to the library."
    slow, fast = EspeakEngine(rate_wpm=120), EspeakEngine(voice="en-gb", rate_wpm=250)
    slow_alone, fast_alone = await _collect(slow, text), await _collect(fast, text)
    assert len(fast_alone) < 0.7 * len(slow_alone)
    mixed = await asyncio.gather(*[_collect(e, text) for e in (slow, fast, slow, fast)])
    for got, alone in zip(mixed, [slow_alone, fast_alone, slow_alone, fast_alone], strict=True):
        assert _same_speech(got, alone)


async def test_espeak_empty_text_and_unknown_voice(espeak: EspeakEngine) -> None:
    assert await _collect(espeak, "   ") == b""
    with pytest.raises(RuntimeError, match="voice"):
        await _collect(EspeakEngine(voice="xx"), "hello")
    assert await _collect(espeak, "hello")  # the library still works afterwards


# --- OpenAI, against the local fake server ------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[SimOpenAIServer]:
    # 4801-byte HTTP chunks: every other chunk boundary splits a sample.
    server = start_sim_openai_server(SimOpenAIConfig(speech_chunk_bytes=4801, speech_chunk_delay_ms=5))
    yield server
    server.stop()


async def test_openai_tts_streams_even_chunks(fake_openai: SimOpenAIServer) -> None:
    engine = OpenAITTSEngine(base_url=fake_openai.base_url, voice="verse")
    text = "Hello from the fake speech endpoint."
    chunks = [chunk async for chunk in engine.synthesize(text)]
    assert len(chunks) > 3
    assert all(len(c) % 2 == 0 for c in chunks)
    pcm = b"".join(chunks)
    assert len(pcm) == 2 * int(24_000 * len(text) * 0.060)
    assert rms_dbfs(pcm) > -20  # a sample split across chunks would turn the tone into noise-like junk
    body = fake_openai.requests[-1]["body"]
    assert body == {"model": "gpt-4o-mini-tts", "voice": "verse", "input": text, "response_format": "pcm"}


async def test_openai_tts_close_early_closes_http_stream(fake_openai: SimOpenAIServer) -> None:
    engine = OpenAITTSEngine(base_url=fake_openai.base_url)
    closed_before = fake_openai.streams_closed_early
    stream = engine.synthesize("A long sentence " * 20)
    await anext(stream)
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    for _ in range(100):  # the server notices the disconnect asynchronously
        if fake_openai.streams_closed_early > closed_before:
            break
        await asyncio.sleep(0.02)
    assert fake_openai.streams_closed_early == closed_before + 1


def test_create_tts_engine() -> None:
    settings = Settings(tts_engine="espeak", tts_model="espeak-ng", tts_voice="en-gb", tts_rate_wpm=200)
    engine = create_tts_engine(settings)
    assert isinstance(engine, EspeakEngine) and (engine.voice, engine.rate_wpm) == ("en-gb", 200)
    settings = Settings(tts_engine="openai", tts_model="tts-1", tts_voice="nova", openai_api_key="sk-x")
    engine = create_tts_engine(settings)
    assert isinstance(engine, OpenAITTSEngine) and (engine.model, engine.voice) == ("tts-1", "nova")
    assert engine.sample_rate == 24_000


async def test_openai_tts_passes_voice_speed_and_instructions(fake_openai: SimOpenAIServer) -> None:
    """OpenAI's own voice, speed and instructions mean what they say there: passed through as sent."""
    engine = OpenAITTSEngine(base_url=fake_openai.base_url, voice="verse")
    style = SpeechStyle(voice="onyx", speed=1.5, instructions="Whisper.")
    assert [chunk async for chunk in engine.synthesize("Hi.", style)]
    body = fake_openai.requests[-1]["body"]
    assert (body["voice"], body["speed"], body["instructions"]) == ("onyx", 1.5, "Whisper.")
