"""Test speech: eSpeak NG through the project's own engine, and Debian's LibriVox recordings."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
import soundfile as sf

from actors.audio.pcm import resample
from testkit.speech import espeak_speech, silence, with_noise_floor

__all__ = ["LIBRIVOX", "espeak_speech", "librivox", "silence", "with_noise_floor", "word_error_rate"]

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


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


def word_error_rate(reference: str, hypothesis: str) -> float:
    norm = jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )
    return float(jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm))
