"""The REST API on the running agent (`serve run serve_config.yaml`, offline engines: llama.cpp,
pocketsphinx, eSpeak), driven by the official `openai` client with only base_url and api_key set."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from openai import OpenAI

from actors.audio.pcm import rms_dbfs
from testkit.recordings import LIBRIVOX, librivox, with_noise_floor, word_error_rate
from testkit.serve_cluster import ServeRun

pytestmark = pytest.mark.slow

# Aggregate WER of the five LibriVox utterances; the engine itself measures 0.28 (tests/test_engines_stt.py).
# Sent at 44.1 kHz, so the server's resampling is on the path.
LIBRIVOX_MAX_WER = 0.35
# eSpeak's formant speech read back by pocketsphinx: the engine test's aggregate bound (one sentence alone
# varies too much to judge).
ESPEAK_MAX_WER = 0.75
SPOKEN = [
    "please turn on the lights in the kitchen",
    "what time is it in london",
    "hello how are you doing this morning",
    "can you tell me a joke",
]


@pytest.fixture(scope="module")
def client(agent: ServeRun) -> OpenAI:
    return OpenAI(base_url=f"{agent.base_url}/v1", api_key="unused-locally", timeout=120)


def wav(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), rate, format="WAV")
    return buf.getvalue()


def test_models(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "gemma3-270m-q4_k_m"
    assert {"en-us", "espeak-ng"} <= set(ids)


def test_chat_completion(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        user="rest-tester",
        max_tokens=24,
    )
    assert reply.model == "gemma3-270m-q4_k_m"  # the offline engine says which model answered
    text = reply.choices[0].message.content
    assert text and text.strip()
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 24


def test_streamed_chat_completion_streams_tokens(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": "Can you suggest something to cook tonight?"}],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=32,
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3 and "".join(deltas).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(deltas)


def test_transcription_of_real_recordings_within_wer(client: OpenAI) -> None:
    if not LIBRIVOX.exists():
        pytest.skip("needs the Debian pocketsphinx-testdata package")
    references, hypotheses = [], []
    for utterance in ("0870", "0880", "0890", "0920", "0930"):
        pcm, reference = librivox(utterance, rate=44_100)
        result = client.audio.transcriptions.create(
            model="whisper-1", file=(f"{utterance}.wav", wav(pcm, 44_100)), response_format="verbose_json"
        )
        assert result.duration == pytest.approx(len(pcm) / 2 / 44_100, abs=0.05)
        references.append(reference)
        hypotheses.append(result.text)
    assert word_error_rate(" ".join(references), " ".join(hypotheses)) <= LIBRIVOX_MAX_WER, hypotheses


def speak(client: OpenAI, text: str) -> bytes:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="en-us", input=text, response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        return b"".join(response.iter_bytes())


def test_speech_is_plausible_speech(client: OpenAI) -> None:
    heard = []
    for text in SPOKEN:
        pcm = speak(client, text)
        seconds = len(pcm) / 2 / 24_000
        # eSpeak at 175 words per minute speaks ~55 ms per character here; 30-150 ms allows for
        # short words and the pauses at the ends, and still catches a wrong rate or truncated audio.
        assert 0.03 * len(text) < seconds < 0.15 * len(text), (text, seconds)
        assert rms_dbfs(pcm) > -30.0  # speech, not silence
        # Read back by pocketsphinx through the transcription endpoint, as a WAV file.
        heard.append(
            str(
                client.audio.transcriptions.create(
                    model="any",
                    file=("speech.wav", wav(with_noise_floor(pcm), 24_000)),
                    response_format="text",
                )
            )
        )
    assert word_error_rate(" ".join(SPOKEN), " ".join(heard)) <= ESPEAK_MAX_WER, heard


def test_speech_wav_streams_a_header_first(client: OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="en-us", input="Hello.", response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        data = b"".join(response.iter_bytes())
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels) == (24_000, 1) and info.frames > 2_400
