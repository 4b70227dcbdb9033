"""G.711 μ-law, the telephone network's 8-bit audio (Twilio Media Streams carry it at 8 kHz), to and
from PCM16, vectorised with numpy (the standard library's `audioop` is gone from Python 3.13)."""

from __future__ import annotations

import numpy as np

MULAW_SAMPLE_RATE = 8_000  # telephone audio
_BIAS = 0x84  # added before the segment search so that every segment starts at a power of two
_CLIP = 32_635  # largest magnitude that still fits once biased


def _decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + _BIAS) << exponent
    return np.where(codes & 0x80, _BIAS - magnitude, magnitude - _BIAS).astype("<i2")


_DECODE = _decode_table()


def mulaw_to_pcm16(mulaw: bytes) -> bytes:
    """μ-law bytes → PCM16 little-endian, one sample per byte."""
    return _DECODE[np.frombuffer(mulaw, dtype=np.uint8)].tobytes()


def pcm16_to_mulaw(pcm16: bytes) -> bytes:
    """PCM16 little-endian → μ-law bytes (an odd trailing byte is ignored)."""
    samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2").astype(np.int32)
    negative = samples < 0
    magnitude = np.minimum(np.abs(samples), _CLIP) + _BIAS
    exponent = np.frexp(magnitude.astype(np.float64))[1] - 8  # floor(log2) - 7: the segment, 0..7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = (negative.astype(np.int32) << 7) | (exponent << 4) | mantissa
    return (~code & 0xFF).astype(np.uint8).tobytes()
