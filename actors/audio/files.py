"""Audio files in and out of the REST API: decoding uploads, and a WAV header for streamed audio.

Uploads are decoded by libsndfile (through `soundfile`): WAV, FLAC, OGG/Vorbis, Opus, MP3 and the
other formats it reads, at any sample rate and channel count; they are mixed down to mono and
resampled with soxr to the rate STT works at.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from actors.audio.pcm import STT_SAMPLE_RATE, AudioFormatError, resample

# A streamed WAV's length is unknown when its header is sent: the RIFF and data sizes say "as long
# as the stream", the value OpenAI's streamed WAV and ffmpeg's piped output use.
UNKNOWN_LENGTH = 0xFFFFFFFF


def decode_upload(data: bytes, max_seconds: float) -> tuple[bytes, float]:
    """An uploaded audio file as 16 kHz mono PCM16, and its duration in seconds.

    Raises AudioFormatError for anything libsndfile cannot read, an empty recording, or one longer
    than `max_seconds` (checked from the header, before decoding).
    """
    if not data:
        raise AudioFormatError("the audio file is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames = f.samplerate, f.frames
            if rate <= 0:
                raise AudioFormatError("the audio file has no sample rate")
            if frames > max_seconds * rate:
                raise AudioFormatError(
                    f"the recording is {frames / rate:.1f} s long; the limit is {max_seconds:g} s"
                )
            samples = f.read(dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)  # libsndfile's words, without the repr
        raise AudioFormatError(
            f"could not decode the audio file ({detail}); send WAV, FLAC, OGG, Opus or MP3"
        ) from exc
    if samples.shape[0] == 0:
        raise AudioFormatError("the audio file has no samples")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1).astype(np.int16)
    pcm = resample(mono.astype("<i2").tobytes(), rate, STT_SAMPLE_RATE)
    return pcm, samples.shape[0] / rate


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
