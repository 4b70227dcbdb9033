"""Semantic turn detection over `WS /v1/realtime` (OpenAI's `semantic_vad`), with the real end-of-turn
model on Debian's LibriVox recordings of a human reader."""

from __future__ import annotations

import base64
import json
import time

import pytest

from testkit.harness import SERVER_EVENT, make_app, receive_until
from testkit.recordings import librivox
from testkit.speech import silence, with_noise_floor

pytestmark = pytest.mark.slow

RATE = 24_000
# "had he married a more amiable woman he might have been | made still more respectable than he was":
# the clause is plainly unfinished after "been" (3.35 s).
SENTENCE = "0920"
OPEN_CUT_S = 3.35


def update(ws, turn_detection: dict | None) -> dict:
    session = {"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}}
    ws.send_text(json.dumps({"type": "session.update", "session": session}))
    return json.loads(ws.receive_text())


def send(ws, pcm: bytes, real_time: bool = False) -> None:
    step = RATE // 50 * 2  # 20 ms frames, as a microphone sends them
    for i in range(0, len(pcm), step):
        audio = base64.b64encode(pcm[i : i + step]).decode()
        ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        if real_time:
            time.sleep(0.02)


def pause(ms: int) -> bytes:
    return with_noise_floor(silence(ms, RATE), seed=ms)


def test_semantic_vad_is_configured_and_reported_as_openai_names_it() -> None:
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        updated = update(ws, {"type": "semantic_vad", "eagerness": "high"})
        SERVER_EVENT.validate_python(updated)
        detection = updated["session"]["audio"]["input"]["turn_detection"]
        assert detection["type"] == "semantic_vad" and detection["eagerness"] == "high"

        error = update(ws, {"type": "semantic_vad", "eagerness": "sometimes"})
        assert error["type"] == "error"
        assert error["error"]["code"] == "invalid_session"
        assert error["error"]["param"] == "session.audio.input.turn_detection.eagerness"
        assert "'low', 'medium', 'high' or 'auto'" in error["error"]["message"]

        back = update(ws, {"type": "server_vad"})
        detection = back["session"]["audio"]["input"]["turn_detection"]
        assert detection["type"] == "server_vad" and detection["silence_duration_ms"] == 500

        # Fields not sent keep their values through a switch to semantic detection and back.
        update(ws, {"type": "server_vad", "silence_duration_ms": 800, "threshold": 0.6})
        update(ws, {"type": "semantic_vad"})
        detection = update(ws, {"type": "server_vad"})["session"]["audio"]["input"]["turn_detection"]
        assert (detection["silence_duration_ms"], detection["threshold"]) == (800, 0.6)


def test_a_finished_sentence_ends_the_turn_without_the_silence_window() -> None:
    speech, _ = librivox(SENTENCE, RATE)
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        update(ws, {"type": "semantic_vad"})
        # 350 ms of quiet after the last word, then nothing more: server VAD (500 ms) would still wait.
        send(ws, with_noise_floor(speech) + pause(350))
        events = receive_until(ws, "response.done")
        [stopped] = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
        assert stopped["audio_end_ms"] <= len(speech) / 2 / RATE * 1000 + 50
        assert events[-1]["response"]["status"] == "completed"


def test_a_mid_clause_pause_does_not_end_the_turn() -> None:
    speech, _ = librivox(SENTENCE, RATE)
    cut = int(OPEN_CUT_S * RATE) * 2
    audio = with_noise_floor(speech[:cut]) + pause(1000) + with_noise_floor(speech[cut:]) + pause(400)
    with make_app().websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        update(ws, {"type": "semantic_vad", "eagerness": "auto"})
        send(ws, audio, real_time=True)  # the verdict on the pause must come while the pause lasts
        events = receive_until(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert kinds.count("input_audio_buffer.speech_started") == 1
        [stopped] = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
        assert stopped["audio_end_ms"] > (OPEN_CUT_S + 1.0) * 1000  # after the words that followed it
        assert events[-1]["response"]["status"] == "completed"
