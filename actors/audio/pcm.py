"""PCM16 helpers shared by every stage: validation, conversion and streaming resampling."""

from __future__ import annotations

import base64
import binascii

import numpy as np
import soxr

PCM_SAMPLE_WIDTH = 2  # bytes per PCM16 sample
STT_SAMPLE_RATE = 16_000  # every STT engine and the VAD work at 16 kHz
SUPPORTED_INPUT_RATES = (16_000, 24_000)
DEFAULT_OUTPUT_RATE = 24_000


class AudioFormatError(ValueError):
    """Raised for audio that cannot be PCM16 mono at a supported rate."""


def decode_base64_pcm(data: str, max_bytes: int) -> bytes:
    """Decode base64 PCM16, rejecting bad base64, oversized payloads and odd byte counts."""
    # base64 inflates by 4/3: reject before decoding so a huge string costs nothing.
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise AudioFormatError(f"audio payload exceeds the limit of {max_bytes} bytes")
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioFormatError(f"audio is not valid base64: {exc}") from exc
    if len(pcm) > max_bytes:
        raise AudioFormatError(f"audio payload exceeds the limit of {max_bytes} bytes")
    if len(pcm) % PCM_SAMPLE_WIDTH:
        raise AudioFormatError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    return pcm


def encode_base64_pcm(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def duration_ms(pcm: bytes, sample_rate: int) -> float:
    return 1000.0 * len(pcm) / (PCM_SAMPLE_WIDTH * sample_rate)


class StreamResampler:
    """Streaming PCM16 resampler (soxr keeps filter state between chunks); a no-op at equal rates."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16")
        )

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        return self._stream.resample_chunk(samples, last=last).astype("<i2").tobytes()


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole PCM16 buffer at once."""
    return StreamResampler(in_rate, out_rate).process(pcm, last=True)


def rms_dbfs(pcm: bytes) -> float:
    """Loudness of PCM16 audio in dBFS (-inf for digital silence)."""
    if not pcm:
        return float("-inf")
    samples = pcm_to_float(pcm)
    rms = float(np.sqrt(np.mean(samples**2)))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")
