"""Preemptive generation: the LLM starts at a pause in the user's speech, before the turn is confirmed,
and its reply is heard only if the turn ends there. On virtual time with fakes (the latency it saves),
and over `WS /v1/realtime` with a human recording, real Silero VAD and real offline STT."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import pytest
from starlette.testclient import TestClient
from test_session import QUESTION, Harness

from actors.audio.vad import SileroSpeechDetector
from actors.config import Settings
from actors.conversation.early_reply import PREEMPTIVE_REPLIES
from actors.conversation.events import (
    ResponseFinished,
    ResponseStarted,
    ResponseTextDelta,
    TranscriptCompleted,
)
from actors.llm.base import LLMEngine, LLMRequest
from actors.llm.stage import LLMStage
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from actors.stt.stage import STTStage
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import silence, tone
from testkit.harness import SERVER_EVENT, receive_until
from testkit.recordings import librivox
from testkit.speech import with_noise_floor

TTS_TTFB_MS = 100
# What the first reply audio may take after the turn is confirmed when the reply and its first phrase's
# audio were prepared at the pause: the session's own work.
ALLOWED_AFTER_TURN_MS = 60


def preemptive_replies(outcome: str) -> float:
    [metric] = PREEMPTIVE_REPLIES.collect()
    counts = {s.labels["outcome"]: s.value for s in metric.samples if s.name.endswith("_total")}
    return counts.get(outcome, 0.0)


@pytest.mark.looptime
async def test_a_reply_prepared_at_the_pause_is_heard_as_soon_as_the_turn_ends() -> None:
    used, wasted = preemptive_replies("used"), preemptive_replies("wasted")
    late, early = Harness(silence_ms=1000), Harness(silence_ms=1000, preemptive=True)
    for h in (late, early):
        await h.stream(tone(1000) + silence(1500))
        await h.wait_for(ResponseFinished)

    [done] = early.of(ResponseFinished)
    assert done.status == "completed" and done.text == "Hello there. How are you today?"
    assert len(early.llm.requests) == 1  # one LLM call, started at the pause and used
    assert (preemptive_replies("used"), preemptive_replies("wasted")) == (used + 1, wasted)
    after_turn = {h: h.of(ResponseFinished)[0].metrics for h in (late, early)}
    # Started at the commit: STT (150 ms), the LLM's first phrase (320 ms) and TTS (100 ms) all follow it.
    late_ms = after_turn[late]["e2e_latency"] - after_turn[late]["end_of_turn_delay"]
    assert late_ms >= 150 + 320 + TTS_TTFB_MS
    # Prepared at the pause, first phrase synthesised: nothing is left once the turn is confirmed.
    early_ms = after_turn[early]["e2e_latency"] - after_turn[early]["end_of_turn_delay"]
    assert early_ms <= ALLOWED_AFTER_TURN_MS
    # The LLM's own latency is still reported as the LLM's.
    assert after_turn[early]["llm_ttft"] == pytest.approx(300, abs=0.01)


@pytest.mark.looptime
async def test_speech_after_the_pause_discards_the_prepared_reply_unheard() -> None:
    wasted = preemptive_replies("wasted")
    h = Harness(silence_ms=500, preemptive=True)
    # A 450 ms pause: the first part is transcribed (150 ms after the 200 ms pause) and the LLM started
    # before the user goes on.
    await h.stream(tone(1000) + silence(450) + tone(800) + silence(1000))
    await h.wait_for(ResponseFinished)

    whole = f"{QUESTION} {QUESTION}"  # each part transcribed on its own, then joined
    assert [t.transcript for t in h.of(TranscriptCompleted)] == [whole]
    assert [r[-1]["content"] for r in h.llm.requests] == [QUESTION, whole]
    assert h.llm.cancelled == 1
    assert preemptive_replies("wasted") == wasted + 1
    # Nothing of the discarded reply reached the client or the conversation.
    assert len(h.of(ResponseStarted)) == 1 and len(h.of(ResponseFinished)) == 1
    assert "".join(e.delta for e in h.of(ResponseTextDelta)) == "Hello there. How are you today?"
    assert [m["role"] for m in h.llm.requests[1]] == ["system", "user"]


@pytest.mark.looptime
async def test_a_short_pause_costs_no_llm_call() -> None:
    h = Harness(silence_ms=500, preemptive=True)
    # The user goes on before the pause's transcript is back: the LLM is never asked.
    await h.stream(tone(1000) + silence(300) + tone(800) + silence(1000))
    await h.wait_for(ResponseFinished)
    assert len(h.llm.requests) == 1


@pytest.mark.looptime
async def test_nothing_is_prepared_when_the_client_asks_for_replies() -> None:
    h = Harness(silence_ms=1000, preemptive=True, create_response=False)
    await h.stream(tone(1000) + silence(1500))
    await h.wait_for(TranscriptCompleted)
    assert h.llm.requests == []
    await h.session.create_response()
    await h.wait_for(ResponseFinished)
    assert len(h.llm.requests) == 1


class EchoLLM(LLMEngine):
    """Answers with what it heard, so a reply shows which transcript it was made for."""

    name = "echo"
    model = "echo"

    def __init__(self) -> None:
        self.heard: list[str] = []

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        text = request["messages"][-1]["content"]
        self.heard.append(text)
        for word in f"You said {text}.".split(" "):
            yield word + " "


def test_a_paused_recording_is_one_turn_answered_for_all_its_words() -> None:
    """Server VAD (1 s) with a 700 ms pause mid-clause, sent in real time: the reply prepared at the
    pause answers only the first part, so it is discarded and the whole turn is answered; the client
    never sees it."""
    rate = 24_000
    speech, _ = librivox("0920", rate)
    cut = int(3.35 * rate) * 2  # "...he might have been | made still more respectable than he was"
    audio = with_noise_floor(speech[:cut] + silence(700, rate) + speech[cut:] + silence(1400, rate))
    echo = EchoLLM()
    settings = Settings(stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak").resolved()
    deps = RouterDeps(
        settings=settings,
        stt=STTStage(PocketsphinxEngine()),
        llm=LLMStage(echo),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=1000)),
        speech_detector=SileroSpeechDetector,
    )
    wasted = preemptive_replies("wasted")
    with TestClient(build_router_app(deps)).websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        # The first part is transcribed while the pause lasts, as it would be for a live speaker.
        detection = {"type": "server_vad", "silence_duration_ms": 1000}
        session = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        ws.send_text(json.dumps({"type": "session.update", "session": session}))
        assert json.loads(ws.receive_text())["type"] == "session.updated"
        step = rate // 50 * 2
        for i in range(0, len(audio), step):
            chunk = base64.b64encode(audio[i : i + step]).decode()
            ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            time.sleep(0.02)
        events = receive_until(ws, "response.done")
    for event in events:
        SERVER_EVENT.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.committed") == 1 and kinds.count("response.created") == 1
    [transcript] = [
        e["transcript"]
        for e in events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]
    assert len(echo.heard) == 2 and echo.heard[-1] == transcript
    first_part = echo.heard[0]
    assert (
        first_part and transcript.startswith(first_part) and len(transcript.split()) > len(first_part.split())
    )
    spoken = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert spoken.strip() == f"You said {transcript}."
    assert preemptive_replies("wasted") == wasted + 1
