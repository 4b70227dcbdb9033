"""`/v1/audio/transcriptions` as code written for OpenAI calls it, through the official `openai` SDK:
the upload formats its users send, every response format (segments in verbose_json, SubRip, WebVTT),
`stream=True` with OpenAI's `transcript.text.*` events, the options it accepts and clear errors."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import av
import numpy as np
import openai
import pytest
import soundfile as sf
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent, TranscriptionVerbose

from actors.audio.encode import SpeechEncoder
from testkit.fakes import silence, tone
from testkit.harness import Harness

# 12 s: speech, a pause, speech; cut at the pause into two chunks of at most 7 s.
RECORDING = tone(6000) + silence(800) + tone(5200)
SECONDS = 12.0


@pytest.fixture(scope="module")
def api() -> Iterator[Harness]:
    harness = Harness(rest_transcription_chunk_s=7)
    with harness.http:
        yield harness


def encoded(container: str, codec: str, pcm: bytes = RECORDING, rate: int = 24_000) -> bytes:
    """`pcm` in a container FFmpeg writes (m4a, webm), stereo at 48 kHz as browsers and phones record."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=48_000, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        mono = np.frombuffer(pcm, dtype="<i2")
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        resampler = av.AudioResampler(format=stream.format.name, layout="stereo", rate=48_000)
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def with_libsndfile(fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(RECORDING, dtype="<i2"), 24_000, format=fmt, subtype=subtype)
    return buf.getvalue()


def with_encoder(fmt: str) -> bytes:
    encoder = SpeechEncoder(fmt, 24_000)  # type: ignore[arg-type]
    return encoder.encode(RECORDING) + encoder.finish()


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("a.wav", lambda: with_libsndfile("WAV")),
        ("a.flac", lambda: with_libsndfile("FLAC")),
        ("a.ogg", lambda: with_libsndfile("OGG", "VORBIS")),
        ("a.opus", lambda: with_libsndfile("OGG", "OPUS")),
        ("a.mp3", lambda: with_encoder("mp3")),
        ("a.m4a", lambda: encoded("mp4", "aac")),
        ("a.webm", lambda: encoded("webm", "libopus")),
    ],
)
def test_every_upload_format_users_send(api: Harness, name: str, make: object) -> None:
    assert callable(make)
    verbose = api.client.audio.transcriptions.create(
        model="whisper-1", file=(name, make()), response_format="verbose_json"
    )
    assert verbose.text == "hello world hello world"  # one per segment: both were heard
    assert verbose.duration == pytest.approx(SECONDS, abs=0.1)


def test_verbose_json_has_segments_at_the_pause(api: Harness) -> None:
    verbose = api.client.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", with_libsndfile("WAV")),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        language="en",
    )
    assert isinstance(verbose, TranscriptionVerbose) and verbose.segments is not None
    assert [s.text for s in verbose.segments] == ["hello world", "hello world"]
    first, second = verbose.segments
    assert first.start == 0 and second.end == pytest.approx(SECONDS, abs=0.01)
    assert first.end == second.start
    assert 6.0 <= first.end <= 6.8  # cut inside the pause
    assert (first.id, second.id) == (0, 1) and second.seek == round(second.start * 100)
    assert verbose.language == "en"


def test_srt_and_vtt(api: Harness) -> None:
    upload = ("a.wav", with_libsndfile("WAV"))
    srt = api.client.audio.transcriptions.create(model="whisper-1", file=upload, response_format="srt")
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\nhello world\n", srt)
    assert [c[0] for c in cues] == ["1", "2"]
    assert cues[0][1] == "00:00:00,000" and cues[1][2] == "00:00:12,000"
    vtt = api.client.audio.transcriptions.create(model="whisper-1", file=upload, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0")
    assert vtt.count("hello world") == 2 and "00:00:12.000\nhello world" in vtt


def test_streamed_transcription_events(api: Harness) -> None:
    events = list(
        api.client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("a.wav", with_libsndfile("WAV")), stream=True
        )
    )
    deltas = [e for e in events if isinstance(e, TranscriptionTextDeltaEvent)]
    assert [e.delta for e in deltas] == ["hello world", " hello world"]  # one per segment, as transcribed
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent)
    assert done.text == "".join(e.delta for e in deltas)
    assert len(events) == 3


def test_language_prompt_and_temperature_are_accepted(api: Harness) -> None:
    verbose = api.client.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", with_libsndfile("WAV")),
        language="fr",
        prompt="Names: Ada, Bob.",
        temperature=0.4,
        chunking_strategy="auto",
        response_format="verbose_json",
    )
    assert verbose.language == "fr"  # echoed; the engine transcribes its own language
    assert verbose.segments is not None and verbose.segments[0].temperature == 0.4
    assert api.client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", with_libsndfile("WAV")), response_format="text", prompt="x"
    ).startswith("hello world")


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"language": "english"}, "language", "not an ISO-639-1 code"),
        ({"temperature": 1.5}, "temperature", "from 0 to 1"),
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities", "only segment"),
        ({"include": ["logprobs"]}, "include", "no log probabilities"),
        ({"response_format": "ass"}, "response_format", "use json, text, srt, vtt, verbose_json"),
        ({"response_format": "srt", "stream": True}, "response_format", "json or text, not srt"),
    ],
)
def test_bad_values_get_openai_errors(
    api: Harness, kwargs: dict[str, object], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", with_libsndfile("WAV")), **kwargs
        )  # type: ignore[call-overload]
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and words in error["message"], error
