"""Speech audio out of the REST API in every format OpenAI's speech endpoint offers, encoded while it is
synthesised: `pcm` (raw PCM16), `wav` (a streamed WAV header, then the PCM), and `mp3`, `opus` (in Ogg),
`aac` (ADTS) and `flac` through PyAV, whose wheels bundle FFmpeg (LGPL) with LAME and libopus.

Each compressed format is a muxer writing into a byte sink: every call hands back the bytes written so
far, so the first audio leaves the server with the first synthesised chunk. FLAC is the exception: its
header holds the length and checksum of the whole stream, which a streamed FLAC leaves unknown and
libsndfile (hence `soundfile`) then refuses to read; so FLAC is written whole and sent at the end.
"""

from __future__ import annotations

import io
import struct
from typing import Literal

import av
import numpy as np

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# format → (FFmpeg muxer, encoder)
_CODECS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}

# A streamed WAV's length is unknown when its header is sent: the RIFF and data sizes say "as long
# as the stream", the value OpenAI's streamed WAV and ffmpeg's piped output use.
UNKNOWN_LENGTH = 0xFFFFFFFF


def streaming_wav_header(sample_rate: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length."""
    byte_rate = sample_rate * channels * sample_width
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_LENGTH)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, channels * sample_width, 16)
        + b"data"
        + struct.pack("<I", UNKNOWN_LENGTH)
    )


def pcm16_frame(pcm: bytes, sample_rate: int, pts: int) -> av.AudioFrame:
    """PCM16 mono as a PyAV frame, `pts` samples into its stream."""
    samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    return frame


class _ByteSink:
    """A write-only file for FFmpeg's muxer (no seek: the output is a stream)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class SpeechEncoder:
    """PCM16 mono at `sample_rate` in, `fmt` bytes out as they are produced."""

    def __init__(self, fmt: SpeechFormat, sample_rate: int) -> None:
        self.fmt, self.sample_rate = fmt, sample_rate
        self._started = False
        self._pts = 0
        self._sink: _ByteSink | io.BytesIO | None = None
        if fmt in _CODECS:
            muxer, codec = _CODECS[fmt]
            # A seekable file lets the FLAC muxer go back and write the length into the header.
            self._sink = io.BytesIO() if fmt == "flac" else _ByteSink()
            self._container = av.open(self._sink, mode="w", format=muxer)
            stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")
            assert isinstance(stream, av.AudioStream)
            self._stream = stream

    @property
    def compressed(self) -> bool:
        """Whether encoding costs CPU worth a worker thread."""
        return self._sink is not None

    def encode(self, pcm: bytes) -> bytes:
        """The bytes of `fmt` that `pcm` adds (a WAV's header with its first call)."""
        if self._sink is None:
            if self.fmt == "wav" and not self._started:
                self._started = True
                return streaming_wav_header(self.sample_rate) + pcm
            return pcm
        if pcm:
            frame = pcm16_frame(pcm, self.sample_rate, self._pts)
            self._pts += frame.samples
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take() if isinstance(self._sink, _ByteSink) else b""

    def finish(self) -> bytes:
        """The rest: what the encoder still holds and the container's trailer."""
        if self._sink is None:
            return self.encode(b"") if self.fmt == "wav" and not self._started else b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take() if isinstance(self._sink, _ByteSink) else self._sink.getvalue()

    def close(self) -> None:
        """Release the encoder without finishing (the client left)."""
        if self._sink is not None:
            self._container.close()
