"""Phone calls through Twilio: μ-law, the webhook and its signature, and whole calls with a simulated
Twilio that follows the documented Media Streams messages, with real speech at 8 kHz μ-law."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import warnings
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from actors.audio.mulaw import mulaw_to_pcm16, pcm16_to_mulaw
from actors.audio.pcm import rms_dbfs
from actors.config import Settings
from actors.llm.stage import LLMStage
from actors.memory.sink import RecentTurnsSink
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.espeak_engine import EspeakEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.phone import STREAM_PATH, VOICE_PATH, caller_user
from serve_app.api.router_app import build_router_app
from serve_app.api.twilio_protocol import (
    TwilioMessageError,
    parse_message,
    request_signature,
    signature_valid,
)
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine, served, tone
from testkit.recordings import librivox, word_error_rate
from testkit.speech import espeak_speech
from testkit.twilio_peer import call_webhook, pcm_of, phone_call, to_mulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # Python's own G.711 (until 3.13): an independent reference

TOKEN = "twilio-auth-token"
KEY = "server-key"
REPLY = (
    "The weather tomorrow will be sunny with a light breeze from the west. "
    "Expect a high of twenty degrees in the afternoon and a clear evening sky. "
    "It should be a fine day for a long walk in the park."
)


# --- μ-law ------------------------------------------------------------------------------------------


def test_mulaw_decoding_matches_the_g711_table() -> None:
    codes = bytes(range(256))
    assert mulaw_to_pcm16(codes) == audioop.ulaw2lin(codes, 2)


def test_mulaw_encoding_round_trips_every_code_and_quantises_like_g711() -> None:
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F and 0xFF are both zero
    assert pcm16_to_mulaw(mulaw_to_pcm16(codes)) == codes
    samples = np.arange(-32768, 32768, dtype="<i2").tobytes()
    ours = np.frombuffer(mulaw_to_pcm16(pcm16_to_mulaw(samples)), "<i2").astype(int)
    reference = np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(samples, 2), 2), "<i2").astype(int)
    original = np.frombuffer(samples, "<i2").astype(int)
    # Never worse than the standard library's encoder, give or take its 14-bit truncation.
    assert np.all(np.abs(ours - original) <= np.abs(reference - original) + 4)


# --- Twilio's wire ------------------------------------------------------------------------------------

SDK_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
SDK_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
    ("Caller", "+14158675309"),
]


def test_request_signature_matches_twilios_own_test_vectors() -> None:
    # The vectors of Twilio's Python helper library (its RequestValidator tests).
    assert request_signature("12345", SDK_URL, SDK_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert request_signature("12345", SDK_URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    # Twilio may sign with or without the scheme's port.
    assert signature_valid("12345", SDK_URL, SDK_PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert signature_valid(
        "12345", SDK_URL.replace("https", "http"), SDK_PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4="
    )
    assert signature_valid(
        "12345", SDK_URL.replace(".com", ".com:1234"), SDK_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )
    assert not signature_valid("54321", SDK_URL, SDK_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not signature_valid("12345", SDK_URL, SDK_PARAMS[1:], "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not signature_valid("12345", SDK_URL, SDK_PARAMS, None)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{nope", "not valid JSON"),
        (b"\x00\x01", "binary"),
        ("[1, 2]", "JSON object"),
        ('{"streamSid": "MZ1"}', "no `event`"),
        ('{"event": "dance"}', "unknown Media Streams event"),
        ('{"event": "media", "media": {"payload": "@@@"}}', "not valid base64"),
        ('{"event": "media", "media": {"track": "outbound", "payload": ""}}', "not the caller's"),
        ('{"event": "media"}', "needs a `media` object"),
        ('{"event": "mark", "mark": {}}', "`mark.name`"),
        (
            '{"event": "start", "start": {"callSid": "CA1", "accountSid": "AC1", "streamSid": "MZ1",'
            ' "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}}}',
            "not supported",
        ),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw: str | bytes, says: str) -> None:
    with pytest.raises(TwilioMessageError, match=says):
        parse_message(raw)


def test_caller_numbers_become_memory_users() -> None:
    mapping = {"+15551230000": "ada"}
    assert caller_user("+15551230000", mapping) == "ada"
    assert caller_user("+442071838750", mapping) == "tel:442071838750"
    assert caller_user("anonymous", mapping) == "anonymous"
    assert caller_user("client:alice", mapping) == "anonymous"
    assert caller_user(None, mapping) == "anonymous"


# --- the router with Twilio in front --------------------------------------------------------------------


class Memory:
    def __init__(self) -> None:
        self.reads: list[str] = []
        self.sink = RecentTurnsSink()

    async def context(self, user_id: str) -> str | None:
        self.reads.append(user_id)
        return None


def fast_app(memory: Memory, **overrides: object) -> TestClient:
    """Deterministic VAD (loud is speech), simulated STT and TTS: the protocol without the engines."""
    settings = Settings(
        stt_engine="simulated", llm_engine="openai", tts_engine="simulated", **overrides
    ).resolved()
    deps = RouterDeps(
        settings=settings,
        stt=SimulatedSTTEngine("what is the weather like", finalize_delay_ms=5),
        llm=LLMStage(FakeLLMEngine("It will be sunny.", ttft_ms=5, tokens_per_s=1000)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=1000)),
        speech_detector=EnergySpeechDetector,
        memory_sink=memory.sink,
        memory_context=memory.context,
    )
    return TestClient(build_router_app(deps), base_url="https://agent.example.com")


def signed_post(client: TestClient, form: dict[str, str], token: str = TOKEN, url: str | None = None):
    url = url or f"https://agent.example.com{VOICE_PATH}"
    signature = request_signature(token, url, list(form.items()))
    return client.post(VOICE_PATH, data=form, headers={"X-Twilio-Signature": signature})


CALL = {
    "CallSid": "CA" + "1" * 32,
    "AccountSid": "AC" + "2" * 32,
    "From": "+15551230000",
    "To": "+15005550006",
}


def test_webhook_answers_a_signed_call_with_a_stream_and_refuses_unsigned_ones() -> None:
    client = fast_app(Memory(), api_keys=KEY, twilio_auth_token=TOKEN)
    answer = signed_post(client, CALL)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/xml")
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib["url"] == f"wss://agent.example.com{STREAM_PATH}"
    token = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}["token"]
    assert token.startswith("ek_")

    assert client.post(VOICE_PATH, data=CALL).status_code == 403  # no signature
    assert signed_post(client, CALL, token="another-token").status_code == 403
    assert signed_post(client, CALL, url="https://elsewhere.example.com/voice").status_code == 403
    signature = request_signature(TOKEN, f"https://agent.example.com{VOICE_PATH}", list(CALL.items()))
    forged = client.post(
        VOICE_PATH, data={**CALL, "From": "+15557777777"}, headers={"X-Twilio-Signature": signature}
    )
    assert forged.status_code == 403  # a signature for other form fields


def test_webhook_behind_a_proxy_checks_the_public_url() -> None:
    client = fast_app(
        Memory(), api_keys=KEY, twilio_auth_token=TOKEN, phone_public_url="https://voice.example.org"
    )
    # The router sees its own address; Twilio signed the public one.
    answer = signed_post(client, CALL, url=f"https://voice.example.org{VOICE_PATH}")
    assert answer.status_code == 200, answer.text
    assert f'url="wss://voice.example.org{STREAM_PATH}"' in answer.text
    assert signed_post(client, CALL).status_code == 403


def test_webhook_without_an_auth_token_answers_only_an_open_router() -> None:
    refused = fast_app(Memory(), api_keys=KEY).post(VOICE_PATH, data=CALL)
    assert refused.status_code == 403
    assert "TWILIO_AUTH_TOKEN" in refused.text
    assert fast_app(Memory()).post(VOICE_PATH, data=CALL).status_code == 200
    missing = fast_app(Memory()).post(VOICE_PATH, data={"From": "+15551230000"})
    assert missing.status_code == 400 and "CallSid" in missing.text


def _start(token: str | None, stream_sid: str = "MZ1") -> str:
    params = {} if token is None else {"token": token}
    start = {
        "accountSid": "AC1",
        "streamSid": stream_sid,
        "callSid": "CA1",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": params,
    }
    return json.dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": stream_sid})


@pytest.mark.parametrize(
    ("token", "says"),
    [(None, "token"), ("ek_forged.signature", "invalid client secret"), (KEY, "token")],
)
def test_stream_without_the_webhooks_token_is_closed_with_the_reason(token: str | None, says: str) -> None:
    client = fast_app(Memory(), api_keys=KEY, twilio_auth_token=TOKEN)
    with client.websocket_connect(STREAM_PATH) as ws:
        ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send_text(_start(token))
        closed = ws.receive()
    assert closed["type"] == "websocket.close" and closed["code"] == 1008
    assert says in closed["reason"]


def _media(pcm8k: bytes, stream_sid: str = "MZ1") -> list[str]:
    mulaw = pcm16_to_mulaw(pcm8k)
    frames = []
    for at in range(0, len(mulaw), 160):
        payload = base64.b64encode(mulaw[at : at + 160]).decode()
        frames.append(
            json.dumps(
                {"event": "media", "streamSid": stream_sid, "media": {"track": "inbound", "payload": payload}}
            )
        )
    return frames


def _until_mark(ws) -> tuple[list[dict], str]:
    messages = []
    while True:
        message = json.loads(ws.receive_text())
        messages.append(message)
        if message["event"] == "mark":
            return messages, message["mark"]["name"]


def test_malformed_messages_are_logged_and_skipped_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = Memory()
    client = fast_app(memory, api_keys=KEY, twilio_auth_token=TOKEN)
    token = ET.fromstring(signed_post(client, CALL).text).find("./Connect/Stream/Parameter").attrib["value"]
    bad = [
        "{not json",
        json.dumps({"event": "dance", "streamSid": "MZ1"}),
        json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "@@"}}),
        json.dumps({"event": "media", "streamSid": "MZ9", "media": {"payload": ""}}),
        json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "never-sent"}}),
    ]
    with caplog.at_level(logging.WARNING), client.websocket_connect(STREAM_PATH) as ws:
        ws.send_text(_start(token))
        for raw in bad:
            ws.send_text(raw)
        for frame in _media(tone(800, rate=8000) + b"\x00\x00" * (8000 * 7 // 10)):
            ws.send_text(frame)
        messages, name = _until_mark(ws)
        assert messages[0]["event"] == "media" and messages[0]["streamSid"] == "MZ1"
        ws.send_text(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}))
        ws.send_text(
            json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}})
        )
        while ws.receive()["type"] != "websocket.close":  # the stream ends with the call's session
            pass
    skipped = [r.getMessage() for r in caplog.records if "message skipped" in r.getMessage()]
    for says in (
        "not valid JSON",
        "unknown Media Streams event",
        "not valid base64",
        "not this call's",
        "never sent",
    ):
        assert any(says in line for line in skipped), (says, skipped)
    # The caller's number is the memory user: read for the prompt, and the turn written for it.
    assert set(memory.reads) == {"tel:15551230000"}
    assert [turn.user_id for turn in memory.sink.turns] == ["tel:15551230000"]
    assert memory.sink.turns[0].user_text == "what is the weather like"


# --- whole calls with real speech ----------------------------------------------------------------------


def speech_app(memory: Memory, reply: str = REPLY, **overrides: object):
    settings = Settings(
        stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak", **overrides
    ).resolved()
    deps = RouterDeps(
        settings=settings,
        stt=PocketsphinxEngine(),
        llm=LLMStage(FakeLLMEngine(reply, ttft_ms=20, tokens_per_s=200)),
        tts=TTSStage(EspeakEngine()),
        memory_sink=memory.sink,
        memory_context=memory.context,
    )
    return build_router_app(deps)


async def test_a_phone_call_with_real_speech_barge_in_and_marks() -> None:
    memory = Memory()
    app = speech_app(
        memory, api_keys=KEY, twilio_auth_token=TOKEN, phone_users="+15551230000=ada", stage_timeout_s=30
    )
    question, reference = librivox("0880")  # "he was not an ill disposed young man"
    interruption = espeak_speech("stop please, tell me about something else instead", rate=16_000)
    async with served(app) as base, httpx.AsyncClient() as http:
        answer = await call_webhook(http, base + VOICE_PATH, "+15551230000", TOKEN)
        assert answer.status == 200, answer.body
        assert answer.stream_url == base.replace("http://", "ws://") + STREAM_PATH
        async with phone_call(answer.stream_url, answer.parameters) as peer:
            await asyncio.sleep(0.5)  # a moment of line noise before the caller speaks
            peer.say(to_mulaw(question, 24_000))
            await peer.wait_until(lambda: len(peer.received) >= 8000)  # a second of reply audio
            first_reply_at = peer.media_times[0]
            assert first_reply_at > peer.speech_ended[0]
            assert peer.marks_echoed, "no mark came back as the reply played"
            assert rms_dbfs(pcm_of(bytes(peer.received))) > -35  # speech, not silence
            # The caller talks over the reply: Twilio is told to drop what it has buffered.
            peer.say(to_mulaw(interruption, 16_000))
            await peer.wait_until(lambda: peer.clears, limit_s=10)
            received_at_clear = len(peer.received)
            # The interruption is a turn of its own, answered from the start of the reply again.
            await peer.wait_until(lambda: memory.sink.turns and len(peer.received) > received_at_clear + 8000)
        first = memory.sink.turns[0]
        assert first.user_id == "ada"
        assert first.interrupted
        # pocketsphinx heard the question through the 8 kHz μ-law line
        assert word_error_rate(reference, first.user_text) < 0.9, first.user_text
    assert set(memory.reads) == {"ada"}
    assert len(peer.played) < len(peer.received)  # the cleared audio was never played
    assert set(peer.marks_echoed) <= set(peer.marks_sent)


async def test_a_cough_over_the_reply_clears_it_and_the_dropped_audio_is_sent_again() -> None:
    memory = Memory()
    settings = Settings(stt_engine="simulated", llm_engine="openai", tts_engine="espeak").resolved()
    deps = RouterDeps(
        settings=settings,
        stt=SimulatedSTTEngine("what is the weather like", finalize_delay_ms=5),
        llm=LLMStage(FakeLLMEngine(REPLY, ttft_ms=5, tokens_per_s=1000)),
        tts=TTSStage(EspeakEngine()),  # real speech: audio that never repeats itself
        speech_detector=EnergySpeechDetector,
        memory_sink=memory.sink,
        memory_context=memory.context,
    )
    async with served(build_router_app(deps)) as base, httpx.AsyncClient() as http:
        answer = await call_webhook(http, base + VOICE_PATH, "+15551230000", None)
        async with phone_call(answer.stream_url, answer.parameters) as peer:
            peer.say(pcm16_to_mulaw(tone(800, rate=8000)))
            await peer.wait_until(lambda: len(peer.received) >= 8000)
            peer.say(pcm16_to_mulaw(tone(200, rate=8000)))  # too short to interrupt
            await peer.wait_until(lambda: peer.clears, limit_s=10)
            dropped, at = peer.dropped[0], peer.received_at_clear[0]
            assert dropped, "the clear dropped nothing: the reply had no audio buffered"
            await peer.wait_until(lambda: memory.sink.turns)
        turn = memory.sink.turns[0]
    assert not turn.interrupted and turn.assistant_text == REPLY
    # The caller misses nothing: what the clear dropped came again when the reply played on.
    assert dropped in bytes(peer.received[at:])
    assert len(peer.clears) == 1
