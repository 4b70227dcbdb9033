"""The REST API in process (Starlette TestClient as the official `openai` client's transport): shapes the
SDK parses, memory in the prompt and turns to the sink, limits, auth, and the OpenAPI document."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from actors.conversation.metrics import HISTOGRAMS
from actors.conversation.prompt import MEMORY_HEADER
from serve_app.api.rest import RestApi
from testkit.fakes import tone
from testkit.harness import KEY, MEMORIES, Harness


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness()
    with harness.http:
        yield harness


def wav_bytes(pcm: bytes, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), rate, format=fmt)
    return buf.getvalue()


def test_chat_completion_with_memory_and_sink(api: Harness) -> None:
    before = HISTOGRAMS["llm_ttft"]._sum.get()  # type: ignore[attr-defined]
    reply = api.client.chat.completions.create(
        model="my-model",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Do you know my cat?"},
        ],
        user="ada",
        max_tokens=50,
        temperature=0.2,
    )
    assert reply.choices[0].message.content == "Hello there. How are you?"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "my-model"  # the OpenAI-compatible engine takes the request's model
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5
    api.validate(
        "/v1/chat/completions", "post", 200, "application/json", reply.model_dump(exclude_unset=True)
    )
    # The user's memory went into the system prompt exactly as a voice turn puts it there.
    system = api.llm.requests[-1][0]
    assert system["role"] == "system"
    assert system["content"] == f"Be brief.\n\n{MEMORY_HEADER}\n{MEMORIES['ada']}"
    assert api.llm.calls[-1] == {"max_tokens": 50, "temperature": 0.2, "user_id": "ada", "model": "my-model"}
    turn = api.sink.turns[-1]
    assert (turn.user_id, turn.user_text, turn.assistant_text) == (
        "ada",
        "Do you know my cat?",
        reply.choices[0].message.content,
    )
    assert not turn.interrupted and turn.turn_id == reply.id
    assert HISTOGRAMS["llm_ttft"]._sum.get() > before  # type: ignore[attr-defined]


def test_streamed_chat_yields_tokens_and_usage(api: Harness) -> None:
    stream = api.client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Hi"}],
        user="bob",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == api.llm.tokens()  # token by token, not phrase by phrase
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(deltas)
    # No system message from the client: the configured instructions carry the memory.
    assert api.llm.requests[-1][0]["content"].startswith(api.settings.system_prompt)
    assert MEMORIES["bob"] in api.llm.requests[-1][0]["content"]
    assert api.sink.turns[-1].user_id == "bob"


def test_max_tokens_cuts_the_reply(api: Harness) -> None:
    reply = api.client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=2
    )
    assert api.llm.calls[-1]["max_tokens"] == 2
    assert api.llm.calls[-1]["user_id"] == "anonymous"
    # The LLM's own finish reason, as OpenAI gives it: the reply was cut short.
    assert (reply.choices[0].finish_reason, reply.choices[0].message.content) == ("length", "Hello there.")
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_offline_engine_answers_with_its_own_model() -> None:
    harness = Harness(llm_engine="llamacpp")
    with harness.http:
        reply = harness.client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )
    assert reply.model == harness.settings.llm_model == "gemma3-270m-q4_k_m"
    assert harness.llm.calls[-1]["model"] is None  # never passed to an engine that loads one model


def test_models(api: Harness) -> None:
    ids = [m.id for m in api.client.models.list()]
    assert ids == [api.settings.llm_model, api.settings.stt_model, api.settings.tts_model]
    assert api.client.models.retrieve(api.settings.llm_model).id == api.settings.llm_model
    with pytest.raises(openai.NotFoundError):
        api.client.models.retrieve("nope")


@pytest.mark.parametrize("rate", [8000, 16_000, 44_100])
def test_transcription_formats_and_rates(api: Harness, rate: int) -> None:
    audio = wav_bytes(tone(1000, rate=rate), rate)
    text = api.client.audio.transcriptions.create(model="any", file=("a.wav", audio))
    assert text.text == "hello world"
    plain = api.client.audio.transcriptions.create(model="any", file=("a.wav", audio), response_format="text")
    assert plain == "hello world"
    verbose = api.client.audio.transcriptions.create(
        model="any", file=("a.wav", audio), response_format="verbose_json"
    )
    assert verbose.text == "hello world" and verbose.duration == pytest.approx(1.0, abs=0.01)
    api.validate(
        "/v1/audio/transcriptions", "post", 200, "application/json", verbose.model_dump(exclude_unset=True)
    )


def test_transcription_of_flac_and_stereo(api: Harness) -> None:
    stereo = np.stack([np.frombuffer(tone(500, rate=48_000), dtype="<i2")] * 2, axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 48_000, format="FLAC")
    result = api.client.audio.transcriptions.create(model="any", file=("a.flac", buf.getvalue()))
    assert result.text == "hello world"


def test_speech_streams_pcm_and_wav(api: Harness) -> None:
    voice = api.settings.tts_voice
    with api.client.audio.speech.with_streaming_response.create(
        model="tts", voice=voice, input="Hello there, this is a test.", response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        pcm = b"".join(response.iter_bytes())
    assert len(pcm) > 24_000  # SimulatedTTSEngine: ~60 ms per character at 24 kHz
    with api.client.audio.speech.with_streaming_response.create(
        model="tts", voice=voice, input="Hello there, this is a test.", response_format="wav"
    ) as response:
        wav = b"".join(response.iter_bytes())
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt "
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels) == (24_000, 1)
    assert wav[44:] == pcm


def test_speech_streams_sse_events(api: Harness) -> None:
    """`stream_format: sse` (what LiveKit's OpenAI TTS plugin asks for): the PCM of the raw stream, in
    base64 `speech.audio.delta` events, then `speech.audio.done`."""
    voice, text = api.settings.tts_voice, "Hello there, this is a test."
    with api.client.audio.speech.with_streaming_response.create(
        model="tts", voice=voice, input=text, response_format="pcm"
    ) as response:
        pcm = b"".join(response.iter_bytes())
    with api.client.audio.speech.with_streaming_response.create(
        model="tts", voice=voice, input=text, response_format="pcm", stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 1  # streamed while synthesised, not one blob
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == pcm
    assert events[-1] == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    }
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * len(deltas)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SPEECH = {"model": "m", "input": "hi", "voice": "en-us"}
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "/v1/chat/completions", {"content": b"{not json"}, 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", {"content": b"[1]"}, 400, "JSON object"),
    ("POST", "/v1/chat/completions", {"content": b""}, 400, "empty"),
    ("POST", "/v1/chat/completions", {"json": {"model": "m"}}, 400, "messages: Field required"),
    ("POST", "/v1/chat/completions", {"json": {"model": "m", "messages": "hi"}}, 400, "messages"),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "m", "messages": [{"role": "tool", "content": "x"}]}},
        400,
        "role",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "m", "messages": [{"role": "user", "content": "x"}], "user": "no spaces"}},
        400,
        "user id 'no spaces' is not valid",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}},
        400,
        "the limit is 4096",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {
            "json": {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            }
        },
        400,
        "tools.0.function: Field required",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}},
        400,
        "temperature",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "m", "messages": [{"role": "system", "content": "x"}]}},
        400,
        "no user or assistant message",
    ),
    ("POST", "/v1/chat/completions", {"content": b"x" * (4 * 1024 * 1024 + 1)}, 413, "exceeds the limit"),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "t", "input": " ", "voice": "en-us"}},
        400,
        "input is empty",
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "t", "input": "x" * 4097, "voice": "en-us"}},
        400,
        "limit is 4096",
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "t", "input": "hi", "voice": "robot"}},
        400,
        "not available: use one of alloy, ash",
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "t", "input": "hi", "voice": "en-us", "response_format": "ogg"}},
        400,
        "response_format: Input should be 'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'",
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "t", "input": "hi", "voice": "en-us", "speed": 4.5}},
        400,
        "speed: Input should be less than or equal to 4",
    ),
    ("POST", "/v1/audio/transcriptions", {"json": {"model": "x"}}, 400, "multipart/form-data"),
    (
        "POST",
        "/v1/audio/transcriptions",
        {"data": {"model": "x"}, "files": {"other": b"x"}},
        400,
        "no `file`",
    ),
    (
        "POST",
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", b"RIFF....garbage")}, "data": {"model": "x"}},
        400,
        "could not decode",
    ),
    (
        "POST",
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", b"")}, "data": {"model": "x"}},
        400,
        "empty",
    ),
    (
        "POST",
        "/v1/audio/transcriptions",
        {
            "files": {"file": ("a.wav", wav_bytes(tone(100), 24_000))},
            "data": {"model": "x", "response_format": "ass"},
        },
        400,
        "not supported",
    ),
    ("GET", "/v1/nothing", {}, 404, "Not Found"),
    ("GET", "/v1/chat/completions", {}, 405, "Method Not Allowed"),
    # Bodies Python's json module mishandles, and booleans where numbers belong.
    ("POST", "/v1/chat/completions", {"content": b"[" * 10_000 + b"]" * 10_000}, 400, "nested deeper"),
    ("POST", "/v1/audio/speech", {"content": b'{"a":' * 100 + b"1" + b"}" * 100}, 400, "nested deeper"),
    ("POST", "/v1/chat/completions", {"content": b'{"model": ' + b"9" * 5000 + b"}"}, 400, "too many digits"),
    ("POST", "/v1/chat/completions", {"content": b'{"temperature": NaN}'}, 400, "NaN"),
    ("POST", "/v1/chat/completions", {"content": b'{"model": "\\ud800"}'}, 400, "surrogate"),
    ("POST", "/v1/chat/completions", {"content": b'{"model": "\xff"}'}, 400, "UTF-8"),
    *[
        ("POST", "/v1/chat/completions", {"json": {**CHAT, field: True}}, 400, f"{field}: Input should be")
        for field in ("max_tokens", "max_completion_tokens", "temperature", "n")
    ],
    ("POST", "/v1/audio/speech", {"json": {**SPEECH, "speed": True}}, 400, "speed: Input should be"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), BAD_REQUESTS)
def test_bad_requests_get_clear_openai_errors(
    api: Harness, method: str, path: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    response = api.http.request(method, path, headers={"Authorization": f"Bearer {KEY}"}, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error


REST = Harness()  # shared by the property test below (a function-scoped fixture would be rebuilt per example)
# Any JSON at all, including deep nesting and booleans, in place of a body or of one of its fields.
JSON_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@settings(derandomize=True, database=None, deadline=None, max_examples=150)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/audio/speech"]),
    body=JSON_ANY
    | st.tuples(
        st.sampled_from([*CHAT, "max_tokens", "temperature", "stream", *SPEECH, "speed"]), JSON_ANY
    ).map(lambda fv: {**CHAT, **SPEECH, fv[0]: fv[1]}),
    depth=st.sampled_from([0, 0, 0, 63, 64, 100_000]),  # Hypothesis raises the recursion limit while testing
)
def test_any_json_body_gets_an_answer_never_a_server_error(path: str, body: Any, depth: int) -> None:
    raw = json.dumps(body)
    from hypothesis import event

    event(f"{type(body).__name__} {depth}")
    if depth and isinstance(body, dict):
        raw = raw[:-1] + (", " if body else "") + '"deep": ' + "[" * depth + "]" * depth + "}"
    response = REST.http.post(path, content=raw, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    elif path.endswith("speech"):
        response.read()


def test_an_unexpected_failure_is_a_json_500_without_details(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any) -> None:
        raise RuntimeError("secret detail /srv/app pid 4242")

    monkeypatch.setattr(RestApi, "_models", broken)
    response = REST.http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "the server failed to handle this request; the failure has been logged",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }


def test_too_long_recording_is_refused() -> None:
    harness = Harness(rest_max_audio_s=0.5)
    with harness.http, pytest.raises(openai.BadRequestError, match=r"limit is 0\.5 s"):
        harness.client.audio.transcriptions.create(model="x", file=("a.wav", wav_bytes(tone(1000), 24_000)))


def test_auth_on_every_rest_endpoint(api: Harness) -> None:
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/audio/speech"),
        ("POST", "/v1/audio/transcriptions"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = api.http.request(method, path, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=api.http).models.list()


def test_openapi_document_is_valid_and_public(api: Harness) -> None:
    from jsonschema.validators import Draft202012Validator

    doc = api.http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {
        "/v1/chat/completions",
        "/v1/audio/transcriptions",
        "/v1/audio/speech",
        "/v1/models",
    }
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    json.dumps(doc)
