"""`/v1/audio/speech` as code written for OpenAI calls it, through the official `openai` SDK, with the
offline eSpeak engine: OpenAI's voice names as distinct voices, `speed`, every response format (read
back by libsndfile where it reads the format, else FFmpeg), `instructions`, streaming, and clear errors."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import get_args

import av
import numpy as np
import openai
import pytest
import soundfile as sf
from openai.types.audio.speech_create_params import Voice

from actors.audio.encode import SpeechEncoder
from actors.tts.espeak_engine import EspeakEngine
from actors.tts.stage import TTSStage
from actors.tts.voices import ESPEAK_VOICES, OPENAI_VOICES
from testkit.harness import Harness

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def api() -> Iterator[Harness]:
    harness = Harness(tts=TTSStage(EspeakEngine()))
    with harness.http:
        yield harness


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Any response format as float samples (FFmpeg's decoders) and the stream's sample rate."""
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].sample_rate
    samples = np.concatenate(frames).astype(np.float32)
    return (samples / 32768.0 if np.abs(samples).max() > 2 else samples), rate


def pcm_of(api: Harness, **kwargs: object) -> np.ndarray:
    response = api.client.audio.speech.create(model="tts-1", input=TEXT, response_format="pcm", **kwargs)  # type: ignore[arg-type]
    return np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768.0


def median_pitch_hz(samples: np.ndarray, rate: int = 24_000) -> float:
    """Median fundamental frequency over the loud 40 ms frames (autocorrelation peak in 60-400 Hz)."""
    n = rate * 40 // 1000
    pitches = []
    for start in range(0, len(samples) - n, n):
        frame = samples[start : start + n] - samples[start : start + n].mean()
        if np.sqrt(np.mean(frame**2)) < 0.05:
            continue
        corr = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = rate // 400, rate // 60
        pitches.append(rate / (lo + int(np.argmax(corr[lo:hi]))))
    return float(np.median(pitches))


def test_the_call_openai_documents_works_unchanged(api: Harness) -> None:
    """OpenAI's own example: model tts-1, voice alloy, the SDK's default format (mp3)."""
    response = api.client.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert response.response.headers["content-type"] == "audio/mpeg"
    samples, rate = sf.read(io.BytesIO(response.content))  # libsndfile, another MP3 decoder
    assert rate == 24_000
    assert 0.2 < len(samples) / rate < 1.5  # "Hello", spoken
    assert np.sqrt(np.mean(samples**2)) > 0.02  # not silence


@pytest.mark.parametrize(
    ("fmt", "media", "rate", "reader"),
    [
        ("mp3", "audio/mpeg", 24_000, "libsndfile"),
        ("opus", "audio/ogg; codecs=opus", 24_000, "libsndfile"),
        ("aac", "audio/aac", 24_000, "ffmpeg"),
        ("flac", "audio/flac", 24_000, "libsndfile"),
        ("wav", "audio/wav", 24_000, "libsndfile"),
    ],
)
def test_every_response_format_is_the_same_speech(
    api: Harness, fmt: str, media: str, rate: int, reader: str
) -> None:
    pcm = pcm_of(api, voice="nova")
    response = api.client.audio.speech.create(model="tts-1", voice="nova", input=TEXT, response_format=fmt)  # type: ignore[arg-type]
    assert response.response.headers["content-type"] == media
    if reader == "libsndfile" and fmt != "wav":
        samples, got_rate = sf.read(io.BytesIO(response.content), dtype="float32")
    else:
        samples, got_rate = decode(response.content)
    assert got_rate == rate
    seconds = len(pcm) / 24_000
    # Codecs pad a few frames at the ends; the speech is all there.
    assert len(samples) / got_rate == pytest.approx(seconds, abs=0.1)
    loud = np.sqrt(np.mean(pcm**2))
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(loud, rel=0.25)


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_lossless_formats_keep_every_sample(fmt: str) -> None:
    pcm = (np.sin(np.arange(30_000) / 7) * 12_000).astype("<i2")
    encoder = SpeechEncoder(fmt, 24_000)  # type: ignore[arg-type]
    data = b"".join(encoder.encode(piece.tobytes()) for piece in np.array_split(pcm, 7)) + encoder.finish()
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24_000 and np.array_equal(samples, pcm)


def test_each_openai_voice_is_a_distinct_local_voice(api: Harness) -> None:
    assert set(OPENAI_VOICES) >= {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
    }
    # Every voice the installed SDK's types name is one of ours.
    sdk_voices = {v for arg in get_args(Voice) for v in get_args(arg)}
    assert len(sdk_voices) >= 11
    assert sdk_voices <= set(OPENAI_VOICES)
    assert len(set(ESPEAK_VOICES.values())) == len(ESPEAK_VOICES)
    audio = {voice: pcm_of(api, voice=voice) for voice in OPENAI_VOICES}
    fingerprints = {
        voice: (len(pcm), round(float(np.sqrt(np.mean(pcm**2))), 4)) for voice, pcm in audio.items()
    }
    assert len(set(fingerprints.values())) == len(OPENAI_VOICES), fingerprints
    # Female voices sound higher than male ones (their eSpeak variants: f* against m*).
    pitch = {voice: median_pitch_hz(pcm) for voice, pcm in audio.items()}
    female = [pitch[v] for v in ("coral", "nova", "shimmer", "sage", "marin")]
    male = [pitch[v] for v in ("ash", "echo", "onyx", "cedar", "ballad")]
    assert min(female) > max(male), pitch


def test_configured_voice_is_still_accepted(api: Harness) -> None:
    assert len(pcm_of(api, voice=api.settings.tts_voice)) > 24_000


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_changes_the_length(api: Harness, speed: float) -> None:
    normal = len(pcm_of(api, voice="echo"))
    faster = len(pcm_of(api, voice="echo", speed=speed))
    # eSpeak's rate is words a minute, not exactly time: within 30 % of the asked ratio.
    assert normal / faster == pytest.approx(speed, rel=0.3)


def test_instructions_are_accepted(api: Harness) -> None:
    """eSpeak cannot act on them (the README says so): the same speech, no error."""
    plain = pcm_of(api, voice="sage")
    styled = pcm_of(api, voice="sage", instructions="Speak in a cheerful and positive tone.")
    assert len(styled) == pytest.approx(len(plain), rel=0.05)
    assert median_pitch_hz(styled) == pytest.approx(median_pitch_hz(plain), rel=0.1)


def test_streaming_response_arrives_in_pieces(api: Harness) -> None:
    text = " ".join([TEXT] * 6)
    with api.client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input=text, response_format="mp3"
    ) as response:
        pieces = list(response.iter_bytes())
    assert len(pieces) > 3  # encoded while synthesised, not one blob at the end
    samples, rate = sf.read(io.BytesIO(b"".join(pieces)))
    assert len(samples) / rate > 10


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"voice": "robot"}, "voice", "voice 'robot' is not available: use one of alloy, ash, ballad"),
        ({"voice": {"id": "voice_1234"}}, "voice", "voice 'voice_1234' is not available"),
        ({"voice": "alloy", "speed": 0.2}, "speed", "greater than or equal to 0.25"),
        ({"voice": "alloy", "speed": 4.5}, "speed", "less than or equal to 4"),
        ({"voice": "alloy", "response_format": "ogg"}, "response_format", "'mp3', 'opus', 'aac'"),
        ({"voice": "alloy", "input": "   "}, "input", "input is empty"),
        ({"voice": "alloy", "input": "x" * 4097}, "input", "the limit is 4096"),
    ],
)
def test_bad_values_get_openai_errors(
    api: Harness, kwargs: dict[str, object], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.client.audio.speech.create(model="tts-1", **{"input": "Hi", **kwargs})  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and words in error["message"], error
    assert caught.value.status_code == 400
