"""The router's Starlette app through TestClient with in-process stages: protocol contract and bad input."""

from __future__ import annotations

import base64
import json

import pytest

from actors.conversation.session import VoiceSession
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from testkit.fakes import silence, tone, user_text_event
from testkit.harness import SERVER_EVENT, make_app, receive_until
from testkit.recordings import librivox
from testkit.speech import noise_burst


def append(ws, pcm: bytes) -> None:
    ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))


def text_turn(ws, text: str) -> list[dict]:
    ws.send_text(user_text_event(text))
    ws.send_text(json.dumps({"type": "response.create"}))
    return receive_until(ws, "response.done")


def test_spoken_turn_over_websocket() -> None:
    with make_app().websocket_connect("/v1/realtime?model=test") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        append(ws, tone(800) + silence(700))
        events = receive_until(ws, "response.done")
        types = [e["type"] for e in events]
        for kind in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_audio_transcript.delta",
            "response.output_audio.delta",
        ):
            assert kind in types
        done = events[-1]["response"]
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["transcript"] == "Hi. Nice to meet you."
        metrics = {k: float(v) for k, v in done["metadata"].items()}
        assert {
            "end_of_turn_delay",
            "transcription_delay",
            "llm_ttft",
            "llm_ttfs",
            "tts_ttfb",
            "e2e_latency",
        } <= set(metrics)
        assert metrics["e2e_latency"] >= metrics["transcription_delay"]


BAD_INPUTS = [
    ("{not json", "invalid_json", "JSON"),
    (json.dumps({"type": "response.dance"}), "unknown_event_type", "response.dance"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}), "invalid_audio", "base64"),
    (
        json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}
        ),
        "invalid_audio",
        "even number of bytes",
    ),
    (
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(b"\x00" * (1024 * 1024 + 2)).decode(),
            }
        ),
        "audio_too_large",
        "limit",
    ),
    (
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}},
                },
            }
        ),
        "unsupported_sample_rate",
        "44100",
    ),
    (
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "x" * 201}],
                },
            }
        ),
        "text_too_long",
        "limit is 200",
    ),
    (json.dumps([1, 2]), "invalid_event", "JSON object"),
    ("[" * 10_000 + "]" * 10_000, "invalid_json", "nested deeper than 64 levels"),
    ('{"type": "response.create", "n": ' + "9" * 5000 + "}", "invalid_json", "too many digits"),
    ('{"type": "response.create", "x": NaN}', "invalid_json", "NaN"),
    ('{"type": "response.create", "x": "\\ud800"}', "invalid_json", "surrogate"),
    (
        json.dumps({"type": "session.update", "session": {"audio": {"input": "x"}}}),
        "invalid_session",
        "session.audio.input must be an object",
    ),
    (
        json.dumps({"type": "session.update", "session": {"max_output_tokens": True}}),
        "invalid_session",
        "not True",
    ),
    (
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": True}}}
                },
            }
        ),
        "invalid_session",
        "threshold must be a number",
    ),
    (
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "audio": {
                        "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500.5}}
                    }
                },
            }
        ),
        "invalid_session",
        "an integer",
    ),
]


@pytest.mark.parametrize(
    ("raw", "code", "words"), BAD_INPUTS, ids=[b[1] + str(i) for i, b in enumerate(BAD_INPUTS)]
)
def test_bad_input_gets_a_clear_error_and_session_survives(raw: str, code: str, words: str) -> None:
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        ws.send_text(raw)
        error = receive_until(ws, "error")[-1]["error"]
        assert error["code"] == code
        assert words in error["message"]
        done = text_turn(ws, "still there?")[-1]["response"]
        assert done["status"] == "completed"


def test_an_unexpected_failure_is_a_plain_server_error_and_the_session_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: VoiceSession) -> None:
        raise RuntimeError("secret detail /srv/app pid 4242")

    monkeypatch.setattr(VoiceSession, "clear_audio", broken)
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        ws.send_text(json.dumps({"type": "input_audio_buffer.clear", "event_id": "evt_9"}))
        error = receive_until(ws, "error")[-1]["error"]
        assert (error["type"], error["code"]) == ("server_error", "server_error")
        assert "session continues" in error["message"]
        assert "secret" not in json.dumps(error) and "RuntimeError" not in json.dumps(error)
        assert text_turn(ws, "still there?")[-1]["response"]["status"] == "completed"


def test_session_update_16k_input_and_text_only_output() -> None:
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        ws.send_text(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "output_modalities": ["text"],
                        "audio": {
                            "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
                        },
                    },
                }
            )
        )
        updated = json.loads(ws.receive_text())
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        events = text_turn(ws, "hello")
        assert not any(e["type"] == "response.output_audio.delta" for e in events)
        assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == (
            "Hi. Nice to meet you."
        )


def test_a_users_memory_is_read_as_their_session_opens() -> None:
    reads: list[str] = []

    async def memory_context(user_id: str) -> str:
        reads.append(user_id)
        return "Ada likes tea."

    client = make_app(memory_context=memory_context)
    with client.websocket_connect("/v1/realtime?user=ada") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        assert reads == ["ada"]  # before any turn: the first one finds it cached


def vad_update(ws, **turn_detection: object) -> dict:
    session = {
        "type": "realtime",
        "audio": {"input": {"turn_detection": {"type": "server_vad", **turn_detection}}},
    }
    ws.send_text(json.dumps({"type": "session.update", "session": session}))
    updated = json.loads(ws.receive_text())
    SERVER_EVENT.validate_python(updated)
    return updated["session"]["audio"]["input"]["turn_detection"]


def test_create_response_off_waits_for_the_client_to_ask() -> None:
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        assert vad_update(ws, create_response=False)["create_response"] is False
        append(ws, tone(800) + silence(700))
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
        ws.send_text(json.dumps({"type": "response.create"}))
        events += receive_until(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert kinds.count("response.created") == 1 and "error" not in kinds
        assert kinds.index("response.created") > kinds.index(
            "conversation.item.input_audio_transcription.completed"
        )
        assert events[-1]["response"]["status"] == "completed"


def test_interrupt_response_off_lets_the_reply_finish_over_user_speech() -> None:
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        assert vad_update(ws, interrupt_response=False)["interrupt_response"] is False
        append(ws, tone(800) + silence(700))
        receive_until(ws, "response.output_audio.delta")
        append(ws, tone(800))  # the user talks over the reply
        events = receive_until(ws, "response.done")
        assert "input_audio_buffer.speech_started" in [e["type"] for e in events]
        assert events[-1]["response"]["status"] == "completed"


def test_idle_timeout_prompts_a_silent_user_with_openais_events() -> None:
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        assert vad_update(ws, idle_timeout_ms=5000)["idle_timeout_ms"] == 5000
        text_turn(ws, "hello")
        append(ws, silence(200))  # a microphone that hears nothing
        events = receive_until(ws, "response.done")  # about 5 s after the reply was heard
        kinds = [e["type"] for e in events]
        assert kinds[:3] == [
            "input_audio_buffer.timeout_triggered",
            "input_audio_buffer.committed",
            "response.created",
        ]
        timed_out = events[0]
        assert events[1]["item_id"] == timed_out["item_id"]
        assert timed_out["audio_end_ms"] - timed_out["audio_start_ms"] <= 5000
        assert events[-1]["response"]["status"] == "completed"

        session = {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 100}}}}
        ws.send_text(json.dumps({"type": "session.update", "session": session}))
        error = json.loads(ws.receive_text())
        assert error["type"] == "error"
        assert error["error"]["param"] == "session.audio.input.turn_detection.idle_timeout_ms"


def test_barge_in_a_noise_burst_pauses_the_reply_and_real_speech_cancels_it() -> None:
    """Over the WebSocket with real speech recognition: a cough-like burst pauses the reply, which then
    plays on unanswered; a recorded sentence spoken over it cancels it and is answered."""
    story = " ".join(f"This is sentence number {i} of a story." for i in range(6))
    question, _ = librivox("0880")  # "he was not an ill disposed young man"
    # Real recognition on a shared machine: a generous stage timeout, so a busy CPU is no STT failure.
    app = make_app(stt=PocketsphinxEngine(), reply=story, stage_timeout_s=30)
    with app.websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        ws.send_text(user_text_event("Tell me a story."))
        ws.send_text(json.dumps({"type": "response.create"}))
        receive_until(ws, "response.output_audio.delta")

        append(ws, noise_burst(300, decay_ms=80) + silence(1000))
        events = receive_until(ws, "input_audio_buffer.committed")
        kinds = [e["type"] for e in events]
        assert "response.output_audio.delta" not in kinds[kinds.index("input_audio_buffer.speech_started") :]
        events += receive_until(ws, "conversation.item.input_audio_transcription.completed")
        assert len(events[-1]["transcript"].split()) < 2  # pocketsphinx hears a word at most in noise
        events += receive_until(ws, "response.output_audio.delta")  # the reply plays on...
        kinds = [e["type"] for e in events]
        assert (
            "response.done" not in kinds and "response.created" not in kinds
        )  # ...not cancelled, nor answered

        append(ws, question + silence(1000))
        events = receive_until(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert "response.output_audio.delta" not in kinds[kinds.index("input_audio_buffer.speech_started") :]
        [heard] = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
        assert len(heard["transcript"].split()) >= 2
        interrupted = events[-1]["response"]
        assert (interrupted["status"], interrupted["status_details"]["reason"]) == (
            "cancelled",
            "turn_detected",
        )
        assert story.startswith(interrupted["output"][0]["content"][0]["transcript"])
        events = receive_until(ws, "response.output_audio.delta")  # the new turn is answered
        assert [e["type"] for e in events].count("response.created") == 1


def test_any_unknown_path_is_answered_with_openais_error_json() -> None:
    client = make_app()
    for path in ("/nothing", "/v1/nothing", "/ui/nothing.js", "/v1/models/../../x"):
        response = client.get(path)
        assert response.status_code == 404, path
        error = response.json()["error"]
        assert error["code"] == "not_found" and "Not Found" in error["message"], path
    assert client.delete("/healthz").json()["error"]["code"] == "method_not_allowed"
