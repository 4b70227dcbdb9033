"""Uploaded audio files for the REST API, decoded to the PCM the STT stage takes.

PyAV (FFmpeg, bundled in its wheels) reads what OpenAI's transcription endpoint takes: WAV, FLAC, MP3,
MP4/M4A (AAC), WebM and Ogg (Opus, Vorbis), MPEG/MPGA, at any sample rate and channel count; FFmpeg's
resampler mixes it down to mono at the rate STT works at.
"""

from __future__ import annotations

import io

import av

from actors.audio.pcm import STT_SAMPLE_RATE, AudioFormatError

SUPPORTED = "WAV, FLAC, MP3, M4A/MP4, WebM, Ogg (Opus or Vorbis)"


def decode_upload(data: bytes, max_seconds: float) -> tuple[bytes, float]:
    """An uploaded audio file as 16 kHz mono PCM16, and its duration in seconds.

    Raises AudioFormatError for anything FFmpeg cannot read or that has no audio, an empty recording,
    or one longer than `max_seconds` (checked from the header where it says, else while decoding).
    """
    if not data:
        raise AudioFormatError("the audio file is empty")
    limit = int(max_seconds * STT_SAMPLE_RATE)
    out = bytearray()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFormatError(f"the file has no audio stream; send {SUPPORTED}")
            stream = container.streams.audio[0]
            if container.duration is not None and container.duration / av.time_base > max_seconds + 1:
                raise _too_long(container.duration / av.time_base, max_seconds)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=STT_SAMPLE_RATE)
            for frame in container.decode(stream):
                for piece in resampler.resample(frame):
                    out += piece.to_ndarray().tobytes()
                if len(out) // 2 > limit:
                    raise _too_long(len(out) / 2 / STT_SAMPLE_RATE, max_seconds)
            for piece in resampler.resample(None):
                out += piece.to_ndarray().tobytes()
    except AudioFormatError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)  # FFmpeg's words, without the file name
        raise AudioFormatError(f"could not decode the audio file ({detail}); send {SUPPORTED}") from exc
    if not out:
        raise AudioFormatError("the audio file has no samples")
    seconds = len(out) / 2 / STT_SAMPLE_RATE
    if seconds > max_seconds:
        raise _too_long(seconds, max_seconds)
    return bytes(out), seconds


def _too_long(seconds: float, max_seconds: float) -> AudioFormatError:
    return AudioFormatError(f"the recording is {seconds:.1f} s long; the limit is {max_seconds:g} s")
