"""Spoken test audio made with the project's own eSpeak engine (no files, no downloads)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from actors.audio.pcm import resample
from actors.tts.espeak_engine import EspeakEngine


def with_noise_floor(pcm: bytes, level: int = 20, seed: int = 0) -> bytes:
    """A faint noise floor, as a real microphone has (digital silence upsets pocketsphinx)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    noise = np.random.default_rng(seed).integers(-level, level + 1, size=samples.size)
    return np.clip(samples + noise, -32768, 32767).astype("<i2").tobytes()


def espeak_speech(text: str, rate: int = 24_000) -> bytes:
    """`text` spoken by eSpeak NG, as PCM16 mono at `rate` with a faint noise floor."""

    async def synth() -> tuple[bytes, int]:
        engine = EspeakEngine()
        return b"".join([c async for c in engine.synthesize(text)]), engine.sample_rate

    # Its own loop in a worker thread: callers may already be inside an event loop.
    with ThreadPoolExecutor(1) as pool:
        pcm, native = pool.submit(asyncio.run, synth()).result()
    return with_noise_floor(resample(pcm, native, rate))


def silence(ms: int, rate: int = 24_000) -> bytes:
    return with_noise_floor(b"\x00\x00" * (rate * ms // 1000), seed=ms)


def noise_burst(
    ms: int, rate: int = 24_000, level_dbfs: float = -20.0, decay_ms: float | None = None, seed: int = 0
) -> bytes:
    """A burst of white noise at `level_dbfs` RMS, as PCM16: flat (a rustle, a breath on the
    microphone) or, with `decay_ms`, struck and dying away (a cough, a knock, a door)."""
    rng = np.random.default_rng(seed)
    n = rate * ms // 1000
    envelope = np.ones(n) if decay_ms is None else np.exp(-np.arange(n) / (rate * decay_ms / 1000))
    attack = min(n, rate // 200)  # 5 ms: no click at the onset
    envelope[:attack] *= np.linspace(0, 1, attack)
    noise = rng.standard_normal(n) * envelope
    noise *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(noise**2) + 1e-12)
    return (np.clip(noise, -1, 1) * 32767).astype("<i2").tobytes()


def speech_end_byte(pcm: bytes, rate: int = 24_000, floor_dbfs: float = -40.0) -> int:
    """Byte offset just after the last 10 ms window louder than `floor_dbfs`."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    window = rate // 100
    n = len(samples) // window
    rms = np.sqrt(np.mean(samples[: n * window].reshape(n, window) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms) > floor_dbfs)[0]
    return int((loud[-1] + 1) * window * 2) if loud.size else 0
