"""Test speech: eSpeak NG through the project's own engine, and Debian's LibriVox recordings."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

from actors.audio import resample
from actors.tts.espeak_engine import EspeakEngine

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def with_noise_floor(pcm: bytes, level: int = 20, seed: int = 0) -> bytes:
    """A faint noise floor, as a real microphone has (digital silence upsets pocketsphinx)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    noise = np.random.default_rng(seed).integers(-level, level + 1, size=samples.size)
    return np.clip(samples + noise, -32768, 32767).astype("<i2").tobytes()


def espeak_speech(text: str, rate: int = 24_000) -> bytes:
    async def synth() -> tuple[bytes, int]:
        engine = EspeakEngine()
        return b"".join([c async for c in engine.synthesize(text)]), engine.sample_rate

    # Its own loop in a worker thread: callers may already be inside an event loop.
    with ThreadPoolExecutor(1) as pool:
        pcm, native = pool.submit(asyncio.run, synth()).result()
    return with_noise_floor(resample(pcm, native, rate))


def librivox(utterance_id: str, rate: int = 24_000) -> tuple[bytes, str]:
    """(PCM16 at `rate`, reference transcript) of one LibriVox recording."""
    transcripts = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"<s>(.*)</s> \((.*)\)", line)
        if match:
            transcripts[match.group(2)] = match.group(1).strip()
    name = f"sense_and_sensibility_01_austen_64kb-{utterance_id}"
    audio, native = sf.read(LIBRIVOX / f"{name}.wav", dtype="int16")
    return resample(audio.tobytes(), native, rate), transcripts[name]


def silence(ms: int, rate: int = 24_000) -> bytes:
    return with_noise_floor(b"\x00\x00" * (rate * ms // 1000), seed=ms)


def word_error_rate(reference: str, hypothesis: str) -> float:
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return float(jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm))
